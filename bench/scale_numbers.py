"""The numbers docs/scale.md derives cluster sizing from, measured on this machine.

    PYTHONPATH=platform python bench/scale_numbers.py [--skip-synth] [--tasks A,B]

1. Bytes per example on the wire: every registered task's synthetic data (``Task.synth``, the
   same columns as its importers write) at a small scale; per split, the bytes a row takes in
   Arrow (what Ray Data moves between nodes and holds in the object store:
   :func:`polymodal.serving.memory.manifest_memory_bytes`) and on disk (Parquet).
2. Ridge: the voxel chunks of a lab-scale fit (95k voxels x 30k TRs), from the importer's
   chunk size, and the bytes a chunk task holds, checked against arrays of those shapes.
3. Checkpoints: LLaMA-7B's parameter count built on the meta device (no weights), DeepSpeed's
   bytes per parameter, and this machine's measured write throughput (safetensors + fsync).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

GIB, MIB = 2**30, 2**20


def wire_bytes(tasks: list[str]) -> None:
    from polymodal.registry import get_task, task_names
    from polymodal.serving.memory import manifest_memory_bytes
    from polymodal.shards import Manifest

    print("## bytes per example (synthetic data, scale 0.05)")
    print(f"{'task':<28} {'split':<12} {'rows':>6} {'arrow B/row':>12} {'parquet B/row':>14}  columns")
    with tempfile.TemporaryDirectory() as tmp:
        for name in tasks or task_names():
            started = time.perf_counter()
            try:
                out = get_task(name).synth(str(Path(tmp) / name.replace(".", "-")), seed=0, scale=0.05,
                                           progress=False)
            except Exception as exc:  # noqa: BLE001 -- a task that cannot synthesise is reported, not fatal
                print(f"{name:<28} synth failed: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            for split, uri in out.items():
                try:
                    m = Manifest.load(uri)
                except Exception:  # noqa: BLE001 -- backbones and other non-dataset outputs
                    continue
                if not m.num_rows:
                    continue
                arrow = manifest_memory_bytes(m, uri) / m.num_rows
                disk = sum(s.bytes for s in m.shards) / m.num_rows
                cols = ", ".join(f"{c}:{s.describe()}" for c, s in m.columns.items())
                print(f"{name:<28} {split:<12} {m.num_rows:>6} {arrow:>12,.0f} {disk:>14,.0f}  {cols[:110]}")
            print(f"{'':<28} (synth {time.perf_counter() - started:.1f} s)")


def fixed_bytes(columns: dict) -> int:
    """Bytes of one row's fixed-shape numeric columns (strings and variable columns not counted)."""
    import numpy as np

    from polymodal.shards import ColumnSpec

    total = 0
    for spec in columns.values():
        spec = spec if isinstance(spec, ColumnSpec) else ColumnSpec(**spec)
        if not spec.variable and spec.dtype not in ("string", "binary"):
            total += math.prod(spec.shape) * np.dtype(spec.dtype).itemsize
    return total


def paper_wire_bytes() -> None:
    """The same columns at the paper presets' feature shapes (the importers' column functions)."""
    from polymodal.models.cheffusion.data import feature_columns
    from polymodal.models.llavilo.data import moment_columns

    print("\n## bytes per example at the paper presets' shapes (fixed columns; text adds ~1 KB)")
    rows = {
        # QVHighlights (real-layouts.md): 75 clips of SlowFast 2304 + CLIP 512 + 2 tef; CLIP text 32 x 512
        "llavilo QVHighlights": moment_columns(max_clips=75, video_dim=2304 + 512 + 2, max_windows=10,
                                               saliency=True, text_shape=(32, 512)),
        # CLIP ViT-L/14 image embedding (768) + SD 1.5 text-encoder target 77 x 768 in float16
        "cheffusion Recipe1M features": feature_columns(clip_dim=768, sd_tokens=77, sd_dim=768),
        # one TR of a 95k-voxel subject, float32 (the ridge's rows; each task reads a 4096-voxel chunk)
        "fmri one TR, 95k voxels": {"y": {"dtype": "float32", "shape": [95_000]}},
    }
    for name, columns in rows.items():
        print(f"{name:<30} {fixed_bytes(columns):>12,} B/row")


def ridge(voxels: int = 95_000, trs: int = 30_000, chunk: int = 4096, features: tuple[int, ...] = (1200, 3940),
          alphas: int = 10) -> None:
    import numpy as np

    print("\n## ridge: voxel chunks (float32)")
    n_chunks = math.ceil(voxels / chunk)
    y = trs * chunk * 4
    # the shapes checked with real arrays at 1/10 of the TRs (bytes scale linearly in TRs)
    probe = np.zeros((trs // 10, chunk), dtype=np.float32)
    assert probe.nbytes * 10 == y
    print(f"{voxels} voxels / {chunk} per chunk = {n_chunks} chunks; one chunk's responses "
          f"({trs} TRs x {chunk}) = {y / GIB:.2f} GiB")
    for p in features:
        basis = (trs * p + p + p * p) * 4  # U (n, p), s (p,), V (p, p) of the SVD of X
        coef = p * chunk * 4 + alphas * chunk * 4  # coef (p, v) + cv_scores (n_alphas, v)
        task = basis + y + coef
        print(f"p = {p:>5} features: X basis {basis / GIB:.2f} GiB (once per node, object store); per chunk task "
              f"{task / GIB:.2f} GiB (basis read zero-copy: {(y + coef) / GIB:.2f} GiB of its own)")


def checkpoints(throughput_bytes: int = 512 * MIB) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    print("\n## checkpoints")
    with torch.device("meta"):
        n = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig()).parameters())
    print(f"LLaMA-7B (transformers LlamaConfig defaults) built on the meta device: {n:,} parameters")
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_WRITE_DIR")) as tmp:
        tensor = torch.ones(throughput_bytes // 4, dtype=torch.float32)
        path = Path(tmp) / "t.safetensors"
        started = time.perf_counter()
        save_file({"w": tensor}, str(path))
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        seconds = time.perf_counter() - started
    rate = throughput_bytes / seconds
    print(f"write throughput here: {throughput_bytes / MIB:.0f} MiB in {seconds:.2f} s = {rate / MIB:.0f} MiB/s "
          f"(safetensors + fsync, {tmp})")
    # DeepSpeed with bf16 per trained parameter: 2 B of weights, 12 B of fp32 master + Adam m and v.
    # ZeRO-2 partitions the optimizer state only (rank 0 writes all the weights); ZeRO-3 both.
    weights, optim = 2 * n, 12 * n
    print(f"LLaMA-7B fully trained: {(weights + optim) / GIB:.1f} GiB per checkpoint "
          f"({weights / GIB:.1f} GiB bf16 weights + {optim / GIB:.1f} GiB optimizer state)")
    for world in (8, 16):
        z2 = weights + optim / world
        z3 = (weights + optim) / world
        print(f"  {world} ranks: ZeRO-2 rank 0 writes {z2 / GIB:.1f} GiB ({z2 / rate:.0f} s at this disk's rate), "
              f"ZeRO-3 each rank {z3 / GIB:.1f} GiB ({z3 / rate:.0f} s)")
    print(f"frozen parameters excluded (exclude_frozen_parameters): 14 B per trained parameter = "
          f"{14e6 / MIB:.1f} MiB per million, {14e6 / rate:.2f} s per million at this disk's rate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-synth", action="store_true", help="skip the bytes-per-example section")
    parser.add_argument("--tasks", default="", help="comma-separated tasks for the bytes-per-example section "
                                                     "(default: every registered task)")
    args = parser.parse_args()
    print(f"# scale numbers, measured on {os.cpu_count()} CPUs ({time.strftime('%Y-%m-%d %H:%M')})")
    if not args.skip_synth:
        wire_bytes([t for t in args.tasks.split(",") if t])
    paper_wire_bytes()
    ridge()
    checkpoints()


if __name__ == "__main__":
    sys.exit(main())
