"""Benchmark: VIOLET video ingestion, Ray Data actor pool against a plain decoding loop.

Three paths turn the same ``--videos`` synthetic MP4s (``write_synthetic_videos``: ``--source-size``
px square, ``--source-frames`` frames each, MPEG-4) into T = ``--frames`` frames per video, resized
to ``--size`` px and JPEG-packed:

* ``plain``: one Python loop, no Ray: ``video.decode_frames`` (PyAV seeks to the segment middles,
  which are resized with PIL; bench/video_decode.py times it alone) then ``video.pack_jpegs``, per video; for
  ``--kind pretrain`` also the visual tokenizer's codes of the frames, as ingestion stores them.
  Nothing is written.
* ``in-process``: ``ingest(use_ray=False)``: the same ``FrameExtractor`` over batches in this
  process, plus the Parquet shards, their checksums and the manifest.
* ``ray``: ``ingest(use_ray=True)``: ``FrameExtractor`` in a Ray Data actor pool of
  ``--concurrency`` actors (default: ingest's own, one per two CPUs) on a local Ray cluster this
  script starts (Ray's default settings, token auth included), shards written by the driver.

Each timed call is the whole call, actor start-up included (every ``ingest`` builds its pool, as
a user's run does). One untimed warm-up call per path on a few videos comes first, so one-off
costs (imports, Ray's first workers) are not charged to the timed calls. Rates are frames/s
(videos x T over the call's seconds), medians over ``--repeats`` interleaved calls; the last
lines are the ratios against the plain loop.

Run: ``.venv/bin/python bench/violet_ingest.py [--videos 64] [--frames 5] [--size 224]
[--source-size 320] [--source-frames 32] [--concurrency N] [--kind retrieval|mcqa|oeqa|pretrain]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from polymodal.models.violet import importers
from polymodal.models.violet.data import FINETUNE_FRAMES, PRETRAIN_FRAMES
from polymodal.models.violet.ingest import ingest
from polymodal.models.violet.video import decode_frames, pack_jpegs

#: per kind, the synthetic source file that feeds it and its importer
SOURCES = {"retrieval": ("msrvtt", partial(importers.read_msrvtt, split="train")),
           "mcqa": ("mcqa", importers.read_mcqa), "oeqa": ("oeqa", importers.read_oeqa),
           "pretrain": ("webvid", importers.read_webvid)}
#: VIOLET's patch side: the visual-token grid per frame is size // PATCH per side
PATCH = 32


def plain_loop(records: list[importers.Record], n_frames: int, size: int, tokenizer_path: str | None,
               grid: tuple[int, int], batch_size: int, quality: int = 90) -> int:
    """Decode, sample, resize and JPEG-pack each record in turn; for pretrain also tokenize the
    frames of every ``batch_size`` videos in one call, as ``FrameExtractor`` does per batch.
    Returns the number of frames produced."""
    tokenizer = None
    if tokenizer_path is not None:
        from polymodal.models.violet.tokenizer import VQGANTokenizer

        tokenizer = VQGANTokenizer(tokenizer_path, grid=grid)
    n, pending = 0, []
    for i, r in enumerate(records):
        frames = decode_frames(r.source, n_frames, size, where=r.source)  # (T, size, size, 3)
        pack_jpegs(frames, quality)
        n += len(frames)
        if tokenizer is not None:
            pending.append(frames)
            if len(pending) == batch_size or i == len(records) - 1:
                tokenizer.encode(np.concatenate(pending))  # (B * T, size, size, 3) -> (B * T, rows, cols)
                pending = []
    return n


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=64, help="synthetic videos to ingest (default 64)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"T sampled per video (default {PRETRAIN_FRAMES} for pretrain, else {FINETUNE_FRAMES})")
    p.add_argument("--size", type=int, default=224, help="stored frame side, px (default 224)")
    p.add_argument("--source-size", type=int, default=320,
                   help="side of the source videos, px, even (default 320: frames are resized, as real ones are)")
    p.add_argument("--source-frames", type=int, default=32,
                   help="frames per source video; every one is decoded (default 32)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="actors in the Ray pool (default: ingest's, one per two CPUs)")
    p.add_argument("--kind", choices=sorted(SOURCES), default="retrieval",
                   help="dataset kind (default retrieval); pretrain adds a tiny random VQ-GAN's codes in every path")
    p.add_argument("--batch-size", type=int, default=16, help="videos per FrameExtractor batch (default 16)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per path, interleaved (default 2)")
    p.add_argument("--ray-cpus", type=int, default=None, help="num_cpus of the local Ray cluster (default: all)")
    args = p.parse_args(argv)
    n_frames = args.frames or (PRETRAIN_FRAMES if args.kind == "pretrain" else FINETUNE_FRAMES)
    grid = (args.size // PATCH, args.size // PATCH)

    import ray

    with tempfile.TemporaryDirectory(prefix="violet_ingest_") as tmp:
        t = time.perf_counter()
        src = importers.write_synthetic_videos(os.path.join(tmp, "src"), args.videos, seed=0,
                                               n_frames_source=args.source_frames, size=args.source_size)
        mib = sum(e.stat().st_size for e in os.scandir(src["videos"])) / 2**20
        print(f"# {args.videos} videos, {args.source_frames} frames of {args.source_size} px each ({mib:.1f} MiB "
              f"MPEG-4), written in {time.perf_counter() - t:.1f} s")
        name, reader = SOURCES[args.kind]
        records = reader(src[name], src["webvid_root" if name == "webvid" else "videos"]).records
        tokenizer_path = None
        if args.kind == "pretrain":
            from polymodal.testing.tiny import write_tiny_vqgan

            tokenizer_path = write_tiny_vqgan(os.path.join(tmp, "vq"))
        answers = None
        if args.kind == "oeqa":  # "val": the vocabulary is given, as for every split but train
            answers = sorted({r.answer_text for r in records})

        t = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset execution reports
        cpus = int(ray.cluster_resources().get("CPU", 0))
        print(f"# ray.init: {time.perf_counter() - t:.1f} s, {cpus} CPUs; host: {os.cpu_count()} CPUs")
        actors = args.concurrency or max(1, cpus // 2)
        kw = {"kind": args.kind, "split": "val", "n_frames": n_frames, "size": args.size,
              "tokenizer_path": tokenizer_path, "grid": grid, "answers": answers, "batch_size": args.batch_size,
              "progress": False}
        calls = 0

        def run_ingest(recs: list[importers.Record], use_ray: bool) -> None:
            nonlocal calls
            calls += 1
            out = os.path.join(tmp, f"out{calls}")
            manifest = ingest(recs, out, use_ray=use_ray, concurrency=args.concurrency, **kw)
            if manifest.num_rows != len(recs):
                raise RuntimeError(f"{out}: {manifest.num_rows} rows written, expected {len(recs)}")

        paths = {
            "plain": lambda recs: plain_loop(recs, n_frames, args.size, tokenizer_path, grid, args.batch_size),
            "in-process": lambda recs: run_ingest(recs, use_ray=False),
            "ray": lambda recs: run_ingest(recs, use_ray=True),
        }
        warm = records[:max(2, actors)]
        warm_s = {key: timed(lambda: fn(warm)) for key, fn in paths.items()}
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.repeats):
            for key, fn in paths.items():
                times[key].append(timed(lambda: fn(records)))
        ray.shutdown()

    total = len(records) * n_frames
    print(f"# kind {args.kind}, T={n_frames}, {args.size} px, batch {args.batch_size}, ray pool {actors} actor(s)"
          + (f", token grid {grid}" if tokenizer_path else ""))
    print(f"{'path':<12} {'median s':>9} {'frames/s':>9} {'videos/s':>9}   all calls, s")
    med = {k: statistics.median(v) for k, v in times.items()}
    for key, v in times.items():
        print(f"{key:<12} {med[key]:9.2f} {total / med[key]:9.1f} {len(records) / med[key]:9.2f}   "
              + " ".join(f"{s:.2f}" for s in v))
    print(f"warm-up calls on {len(warm)} videos, s: " + ", ".join(f"{k} {v:.2f}" for k, v in warm_s.items()))
    print(f"ratio in-process/plain (frames/s): {med['plain'] / med['in-process']:.3f}")
    print(f"ratio ray/plain (frames/s): {med['plain'] / med['ray']:.3f}")


if __name__ == "__main__":
    main()
