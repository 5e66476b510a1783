"""VIOLET's command-line commands: ``data import --format webvid | cc | msrvtt | mcqa | oeqa``.

Each format reads its source file, then decodes, samples and JPEG-packs the videos into one dataset
of ``--split`` at ``--out`` (``ingest``: a Ray Data actor pool, or this process with ``--local``).
"""

from __future__ import annotations

import argparse
import os
from functools import partial

from polymodal import cliargs
from polymodal.errors import PolymodalError
from polymodal.registry import Command

#: format -> (reader in .importers, dataset kind, what --source is)
FORMATS = {
    "webvid": ("read_webvid_csv", "pretrain", "WebVid CSV of videoid,name"),
    "cc": ("read_cc_tsv", "pretrain", "Conceptual Captions TSV of caption<TAB>image path"),
    "msrvtt": ("read_msrvtt_json", "retrieval", "MSR-VTT JSON of video + caption"),
    "mcqa": ("read_mcqa", "mcqa", "JSON Lines of video, question, options, answer index"),
    "oeqa": ("read_oeqa", "oeqa", "JSON Lines of video, question, answer text"),
}


def _args(fmt: str, p: argparse.ArgumentParser) -> None:
    from .data import FINETUNE_FRAMES, PRETRAIN_FRAMES

    _, kind, source = FORMATS[fmt]
    images = fmt == "cc"
    p.add_argument("--source", required=True, help=f"the source file: {source} (local or s3://)")
    if images:
        p.add_argument("--images", metavar="FOLDER",
                       help="the folder the TSV's image paths are relative to (default: the TSV's folder)")
    else:
        p.add_argument("--videos", required=True, metavar="FOLDER",
                       help="the folder of <video id>.mp4|.avi|.mkv|.webm files (local or s3://)")
    p.add_argument("--out", required=True, help="folder or s3:// URI for the one dataset of --split")
    p.add_argument("--split", required=True, help="the split name written in the manifest, e.g. train")
    default_frames = 1 if images else PRETRAIN_FRAMES if kind == "pretrain" else FINETUNE_FRAMES
    if not images:
        p.add_argument("--frames", type=int, default=default_frames, metavar="T",
                       help=f"frames sampled per video, the middle of T equal segments (default {default_frames})")
    p.add_argument("--size", type=int, default=224, help="frames are resized to SIZE x SIZE px (default 224)")
    if kind == "pretrain":
        p.add_argument("--vq-tokenizer", required=True, metavar="PATH",
                       help="diffusers VQModel folder (save_pretrained) whose codes become the masked visual-token "
                            "targets")
        p.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"),
                       help="visual-token grid per frame (default SIZE/32 per side: the model's 32 px patch grid, "
                            "7 7 at 224 px)")
    if kind == "oeqa":
        p.add_argument("--answers-from", metavar="TRAIN_URI",
                       help="reuse the answer vocabulary of this train dataset (required for splits other than train)")
        p.add_argument("--top-k", type=int, default=1000,
                       help="train: answer vocabulary size, the K most frequent answers (default 1000)")
    p.add_argument("--skip-bad", action="store_true", help="log and skip malformed rows and unreadable videos")
    p.add_argument("--local", action="store_true",
                   help="decode in this process, without Ray (default: a Ray Data actor pool on the cluster at "
                        "RAY_ADDRESS, or a local one)")
    p.add_argument("--concurrency", type=int,
                   help="actors in the pool (default: one per GPU for pre-training on GPUs, else one per two CPUs)")
    cliargs.add_config(p, required=False)


def _grid(args: argparse.Namespace) -> tuple[int, int]:
    """The visual-token grid per frame: ``--grid``, else the model's patch grid at ``--size``."""
    if args.grid:
        rows, cols = args.grid
        if rows < 1 or cols < 1:
            raise PolymodalError(f"--grid {rows} {cols}: both sides must be positive")
        return rows, cols
    from .config import VioletConfig

    # the MVM targets must lie on the patch grid the model sees (7 x 7 for 224 px, 32 px patches)
    patch = VioletConfig.model_fields["patch_size"].default
    if args.size % patch:
        raise PolymodalError(f"--size {args.size} is not a multiple of VIOLET's {patch} px patches, so the token "
                             f"grid cannot be derived; pass --grid ROWS COLS (image_size // patch_size of the model)")
    return args.size // patch, args.size // patch


def _run(fmt: str, args: argparse.Namespace) -> None:
    """Read a VIOLET source file, then decode, sample and pack its videos into one dataset."""
    from . import importers
    from .ingest import ingest

    reader, kind, _ = FORMATS[fmt]
    opts = cliargs.storage_options(args)
    images = fmt == "cc"
    root = args.images if images else args.videos
    n_frames = 1 if images else args.frames
    if n_frames < 1:
        raise PolymodalError(f"--frames {n_frames}: sample at least one frame per video")
    grid = (1, 1)  # the vt_codes grid; only pretrain datasets have that column
    if kind == "pretrain":
        if not os.path.isfile(os.path.join(args.vq_tokenizer, "config.json")):
            raise PolymodalError(f"--vq-tokenizer {args.vq_tokenizer}: no config.json there; pass a local folder "
                                 "written by VQModel.save_pretrained")
        grid = _grid(args)
    answers = None
    if kind == "oeqa":
        if args.answers_from:
            from polymodal import shards

            answers = shards.open_dataset(args.answers_from, opts).meta.get("answer_vocab")
            if not answers:
                raise PolymodalError(f"--answers-from {args.answers_from}: its manifest has no answer_vocab; pass "
                                     "the train dataset written by `data import --format oeqa --split train`")
        elif args.split != "train":
            raise PolymodalError(f"--format oeqa --split {args.split}: pass --answers-from TRAIN_URI (the oeqa train "
                                 "dataset) so every split indexes the same answer vocabulary; only train builds its "
                                 "own")
    # parse and check every row before Ray starts: a bad file fails in seconds
    parsed = getattr(importers, reader)(args.source, root, skip_bad=args.skip_bad, opts=opts)
    if not args.local:
        cliargs.init_ray()
    manifest = ingest(parsed, args.out, kind=kind, split=args.split, n_frames=n_frames, size=args.size,
                      tokenizer_path=getattr(args, "vq_tokenizer", None), answers=answers,
                      top_k=getattr(args, "top_k", 1000), use_ray=not args.local, grid=grid,
                      concurrency=args.concurrency, opts=opts, skip_bad=args.skip_bad, progress=not args.quiet)
    print(f"{manifest.split}: {args.out} ({manifest.num_rows} rows, {kind}, T={n_frames}; skipped "
          f"{parsed.skipped} bad source rows and {manifest.meta['skipped']} unreadable files)")


def import_formats() -> list[Command]:
    """One ``data import`` format per source kind."""
    what = {"pretrain": "pre-training clips with visual-token targets", "retrieval": "text-video retrieval",
            "mcqa": "multiple-choice video QA", "oeqa": "open-ended video QA"}
    return [Command(fmt, f"VIOLET {what[kind]}: {source}; " + ("images decoded and JPEG-packed" if fmt == "cc" else
                                                                "videos decoded, sampled and JPEG-packed"),
                    partial(_args, fmt), partial(_run, fmt))
            for fmt, (_, kind, source) in FORMATS.items()]
