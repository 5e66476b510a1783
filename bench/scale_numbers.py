"""The numbers docs/scale.md derives cluster sizing from, measured on this machine.

    PYTHONPATH=platform python bench/scale_numbers.py [--skip-synth] [--tasks A,B]

1. Bytes per example on the wire: every registered task's synthetic data (``Task.synth``, the
   same columns as its importers write) at a small scale; per split, the bytes a row takes in
   Arrow (what Ray Data moves between nodes and holds in the object store:
   :func:`polymodal.serving.memory.manifest_memory_bytes`) and on disk (Parquet). Then the
   paper presets' shapes: fixed columns from the importers' column functions, and VIOLET's
   JPEG-packed frames written through its schema from natural photographs and measured.
2. Ridge: the voxel chunks of a lab-scale fit (95k voxels x 30k TRs), from the importer's
   chunk size, and the bytes a chunk task holds, checked against arrays of those shapes.
3. Checkpoints: LLaMA-7B's parameter count built on the meta device (no weights), every paper
   preset's trained and total parameters (its model class built from the architectures' config
   classes, on the meta device but for VIOLET, whose BERT from_pretrained refuses it), DeepSpeed's bytes per parameter, and this machine's measured
   write throughput (safetensors + fsync).
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
    from polymodal.models.cheffusion.config import PRESETS as CHEF
    from polymodal.models.cheffusion.data import feature_columns
    from polymodal.models.llavilo.data import moment_columns
    from polymodal.models.wander.data import columns as wander_columns
    from polymodal.models.wander.data import feature_spec
    from polymodal.shards import ColumnSpec

    chef = CHEF["paper"]()
    print("\n## bytes per example at the paper presets' shapes (fixed columns; text adds ~1 KB)")
    rows = {
        # QVHighlights (real-layouts.md): 75 clips of SlowFast 2304 + CLIP 512 + 2 tef; CLIP text 32 x 512
        "llavilo QVHighlights": moment_columns(max_clips=75, video_dim=2304 + 512 + 2, max_windows=10,
                                               saliency=True, text_shape=(32, 512)),
        # `data features`: CLIP ViT-L/14's pooled vision state (its hidden size, the preset's clip_dim 1024)
        # + the SD 1.5 text encoder's 77 x 768 target in float16 (the raw recipe image and texts ride along)
        "cheffusion Recipe1M features": feature_columns(clip_dim=chef["clip_dim"], sd_tokens=chef["sd_tokens"],
                                                        sd_dim=chef["sd_dim"]),
        # `--format food101` at its defaults (wander_paper_food101.yaml): uint8 3 x 224 x 224 image for
        # ViT-B/16, 40 BERT token ids, the label
        "wander UPMC-Food101": wander_columns("classification", {
            "image": ColumnSpec(dtype="uint8", shape=[3, 224, 224]), "text": ColumnSpec(dtype="int64", shape=[40])}),
        # `--format mmsa` on MOSI's aligned_50.pkl (real-layouts.md: text, audio, vision 50 x (768, 5, 20))
        "wander CMU-MOSI aligned_50": wander_columns("regression", {
            "text": feature_spec((50, 768)), "audio": feature_spec((50, 5)), "vision": feature_spec((50, 20))}),
        # one TR of a 95k-voxel subject, float32 (the ridge's rows; each task reads a 4096-voxel chunk)
        "fmri one TR, 95k voxels": {"y": {"dtype": "float32", "shape": [95_000]}},
    }
    for name, columns in rows.items():
        print(f"{name:<30} {fixed_bytes(columns):>12,} B/row")
    violet_wire_bytes()


def photo_clips(rows: int, n_frames: int, size: int = 224) -> list["np.ndarray"]:
    """``rows`` clips of (T, size, size, 3) uint8 frames from natural photographs (scikit-learn's
    two sample images, ``china.jpg`` and ``flower.jpg``, 427 x 640): clip i pans a 427 px square
    window along photo i % 2 from 8 x (i // 2) px, 24 px a frame, each frame resized as VIOLET's
    ingest resizes a decoded frame (bilinear to size x size). Every clip differs, so Parquet
    cannot share one copy between rows."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    clips = []
    for i in range(rows):
        photo = photos[i % 2]
        h, start = photo.shape[0], 8 * (i // 2)
        clips.append(np.stack([np.asarray(Image.fromarray(photo[:, start + t * 24:start + t * 24 + h])
                                          .resize((size, size), Image.BILINEAR)) for t in range(n_frames)]))
    return clips


def violet_wire_bytes(rows: int = 8) -> None:
    """VIOLET rows at the paper's settings written through the real schema (``violet.data.columns``,
    JPEG-packed with ingest's :func:`pack_jpegs` at its default quality 90, 224 px frames) and
    measured as the other tasks are (:func:`manifest_memory_bytes`): the frames are JPEGs, so their
    bytes depend on the picture; here natural photographs (:func:`photo_clips`)."""
    import numpy as np

    from polymodal.models.violet.config import PRESETS
    from polymodal.models.violet.data import FINETUNE_FRAMES, PRETRAIN_FRAMES, columns
    from polymodal.models.violet.video import pack_jpegs
    from polymodal.serving.memory import manifest_memory_bytes
    from polymodal.shards import Manifest, ShardWriter

    paper = PRESETS["paper"]()
    size, grid = paper["image_size"], paper["image_size"] // paper["patch_size"]
    text = "a man in a red jacket is skiing down a snowy mountain slope"  # a caption / question of ~12 words
    print(f"\n## VIOLET at the paper's settings ({size} px frames, JPEG quality 90, natural photographs)")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, n_frames in (("pretrain", PRETRAIN_FRAMES), ("retrieval", FINETUNE_FRAMES), ("oeqa", FINETUNE_FRAMES)):
            packed = [pack_jpegs(clip, 90) for clip in photo_clips(rows, n_frames, size)]
            batch = {"id": np.array([f"v{i}#0" for i in range(rows)]), "video": np.array([f"v{i}" for i in range(rows)]),
                     "text": np.array([text] * rows), "frames": np.array([b for b, _ in packed], dtype=object),
                     "frame_bytes": np.stack([n for _, n in packed])}
            if kind == "pretrain":
                batch["vt_codes"] = np.zeros((rows, n_frames, grid, grid), np.int64)
            if kind == "oeqa":
                batch["answer"] = np.zeros(rows, np.int64)
                batch["answer_text"] = np.array(["skiing"] * rows)
            uri = f"{tmp}/{kind}"
            with ShardWriter(uri, task=f"violet.{kind}", split="train", columns=columns(kind, n_frames, (grid, grid)),
                             progress=False) as w:
                w.write(batch)
            m = Manifest.load(uri)
            jpeg = float(np.mean([n for _, n in packed for n in n]))
            print(f"violet.{kind:<10} T = {n_frames}: {manifest_memory_bytes(m, uri) / m.num_rows:>8,.0f} B/row "
                  f"arrow ({jpeg:,.0f} B per JPEG frame)")


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


def _count(name: str, model, note: str = "") -> None:
    """One row: parameters trained and in all, and the checkpoint they make at DeepSpeed's 14 B per
    trained parameter (section 3: bf16 weights + fp32 master weights and Adam moments)."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"{name:<40} {trained:>13,} {total:>15,} {100 * trained / total:>8.2f}% {14 * trained / GIB:>8.2f}  {note}")


class _OptTokenizerShape:
    """What ChefFusion reads of OPT's tokenizer (facebook/opt-6.7b: 50,265 tokens, ``</s>`` = 2 as
    BOS and EOS, ``<pad>`` = 1); the trained count does not depend on it."""

    bos_token_id, eos_token_id, pad_token_id, sep_token_id, cls_token_id = 2, 2, 1, None, None

    def __len__(self) -> int:
        return 50_265


def _bert_base_folder(path: Path) -> str:
    """A bert-base-uncased-shaped folder for VIOLET's ``from_pretrained`` without its weights:
    ``BertConfig()`` (bert-base's shapes), an empty safetensors file (every weight is "newly
    initialised") and a WordPiece tokenizer of BERT's special tokens only (the
    model reads its [MASK] and [CLS] ids; the vocabulary's size comes from the config)."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    BertConfig().save_pretrained(path)
    save_file({}, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    return str(path)


def trained_parameters() -> None:
    """Every paper preset's model built on the meta device (real shapes, no memory) from its
    architectures' config classes, through the systems' own model classes: parameters trained
    (``requires_grad``) and in all. Frozen backbones as the jobs/configs/*_paper*.yaml name them."""
    import json

    import torch
    import transformers
    from torch import nn
    from transformers import AutoConfig, AutoModel, BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM
    from transformers import OPTConfig, OPTForCausalLM, ViTConfig

    print("\n## trained parameters of the paper presets (meta device)")
    print(f"{'model (config)':<40} {'trained':>13} {'in all':>15} {'share':>9} {'ckpt GiB':>8}")

    # LLaViLo (llavilo_paper.yaml, llavilo_charades_paper.yaml): frozen LLaMA-7B (LlamaConfig's defaults)
    from polymodal.models.llavilo.config import PRESETS as LLAVILO
    from polymodal.models.llavilo.config import LLaViLoConfig
    from polymodal.models.llavilo.model import LLaViLoModel

    cfg = LLaViLoConfig(**{**LLAVILO["paper"](), "llm": "llama-7b"})
    with torch.device("meta"):
        model = LLaViLoModel(LlamaForCausalLM(LlamaConfig()), None, cfg.video_dim, cfg.text_dim, cfg)
    _count("llavilo paper (LLaMA-7B frozen)", model, "QVHighlights and Charades-STA (video 2818, text 512)")

    # ChefFusion (cheffusion_paper.yaml): frozen OPT-6.7B (facebook/opt-6.7b's config.json shapes).
    # Its input embedding is made real (bf16 zeros, 0.4 GB): ChefFusion reads its std to scale the
    # [IMG] rows' init; the rest of the LM stays on the meta device.
    from polymodal.models.cheffusion.config import PRESETS as CHEF
    from polymodal.models.cheffusion.config import CheffusionConfig
    from polymodal.models.cheffusion.model import ChefFusion

    opt = OPTConfig(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32,
                    word_embed_proj_dim=4096, vocab_size=50272, max_position_embeddings=2048)
    with torch.device("meta"):
        lm = OPTForCausalLM(opt)
    embed = lm.get_input_embeddings()
    embed.weight = nn.Parameter(torch.zeros(embed.weight.shape, dtype=torch.bfloat16))
    lm.tie_weights()
    cfg = CheffusionConfig(**{**CHEF["paper"](), "lm": "facebook/opt-6.7b", "clip": "clip", "sd": "sd"})
    _count("cheffusion paper (OPT-6.7B frozen)", ChefFusion(cfg, lm, _OptTokenizerShape()),
           "CLIP and SD load only to generate: not counted")
    del lm, embed

    # VIOLET (violet_paper_*.yaml): Video Swin-B + bert-base-uncased, all trained
    from polymodal.models.violet.config import PRESETS as VIOLET
    from polymodal.models.violet.config import VioletConfig
    from polymodal.models.violet.model import Violet

    transformers.logging.set_verbosity_error()  # from_pretrained lists every "missing" BERT weight
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        bert = _bert_base_folder(Path(tmp) / "bert")
        for head, extra, note in (("pretrain", {}, "T = 4, VTM + MLM + MVM (8192) heads"),
                                  ("retrieval", {"frames": 5}, "T = 5, VTM head as the cross-encoder"),
                                  ("oeqa", {"frames": 5, "num_answers": 1000}, "T = 5, 1000 answers (MSRVTT-QA)")):
            cfg = VioletConfig(**{**VIOLET["paper"](), "bert": bert, "head": head, **extra})
            # not on the meta device: from_pretrained refuses it; random weights, ~0.8 GB for a moment
            _count(f"violet paper, {head}", Violet(cfg, load_visual_weights=False), note)

        # Wander (wander_paper_food101.yaml): frozen ViT-B/16 + BERT-base (their config classes' defaults)
        from polymodal.models.wander import PRESETS as WANDER
        from polymodal.models.wander import WanderConfig, WanderModel
        from polymodal.models.wander.backbone import read_spec

        backbone = Path(tmp) / "vit-bert"
        ViTConfig().save_pretrained(backbone / "vit")
        BertConfig().save_pretrained(backbone / "bert")
        (backbone / "backbone.json").write_text(json.dumps({"modalities": [
            {"name": "image", "input": "pixel_values", "seq_len": 197, "encoder": "vit"},
            {"name": "text", "input": "input_ids", "seq_len": 40, "encoder": "bert"}]}))
        spec = read_spec(str(backbone))
        for d in (64, 128):
            cfg = WanderConfig(**{**WANDER["paper"](), "backbone": str(backbone), "down_dim": d, "num_classes": 101})
            with torch.device("meta"):
                encoders = nn.ModuleDict({m.name: AutoModel.from_config(
                    AutoConfig.from_pretrained(backbone / m.encoder)) for m in spec.modalities})
                for enc in encoders.values():
                    enc.pooler = None  # as load_backbone does
                model = WanderModel(spec, encoders, cfg, "classification")
            _count(f"wander paper, UPMC-Food101, d = {d}", model, "Table 1: 3.1 M (d 64), 4.9 M (d 128)")

    # fMRI MLM (fmri_mlm_paper.yaml): BertForMaskedLM from scratch, as MlmTask.build_model makes it, with
    # `data mlm`'s default WordPiece vocabulary of 8000 (a trained tokenizer's size; at most that)
    from polymodal.models.fmri.mlm import PRESETS as MLM

    p = MLM["paper"]()
    with torch.device("meta"):
        model = BertForMaskedLM(BertConfig(vocab_size=8000, hidden_size=p["hidden_size"],
                                           num_hidden_layers=p["num_layers"], num_attention_heads=p["num_heads"],
                                           intermediate_size=p["intermediate_size"],
                                           max_position_embeddings=p["max_length"]))
    _count("fmri.mlm paper (vocabulary 8000)", model, "all trained")


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
    trained_parameters()
    checkpoints()


if __name__ == "__main__":
    sys.exit(main())
