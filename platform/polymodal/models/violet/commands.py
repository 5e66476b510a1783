"""VIOLET's ``data import`` formats: the released layouts of WebVid, CC3M, MSR-VTT, MSRVTT-QA, MSVD-QA
and TGIF-QA, plus plain ``mcqa`` / ``oeqa`` JSON Lines.

Each format reads its source files (:mod:`.importers`: every row checked before anything is
decoded), then decodes, samples and JPEG-packs the videos into one dataset of ``--split`` at
``--out`` (:func:`~.ingest.ingest`: a Ray Data actor pool, or this process with ``--local``). A rerun
of an interrupted import continues after its last finished shard.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from polymodal import cliargs
from polymodal.errors import PolymodalError
from polymodal.registry import Command


@dataclass(frozen=True)
class _Format:
    """One ``--format``: its reader, the dataset kind it writes and its own options."""

    kind: str  # pretrain | retrieval | mcqa | oeqa | qa (TGIF-QA: mcqa or oeqa by the file's task)
    help: str
    source: str  # what --source is
    media: str  # the flag (and args attribute) of the folder of videos / images
    media_help: str
    reader: str  # the function of .importers: reader(source, media folder, skip_bad=, opts=, **extra(args))
    extra: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    add: Callable[[argparse.ArgumentParser], None] | None = None  # format-only options
    split_help: str = "the split name written in the manifest, e.g. train"

    def read(self, args: argparse.Namespace, opts: Any) -> Any:
        """The checked source (:class:`~.importers.Parsed`) named by ``args``."""
        from . import importers

        return getattr(importers, self.reader)(args.source, getattr(args, self.media), skip_bad=args.skip_bad,
                                               opts=opts, **self.extra(args))


def _msrvtt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split-csv", metavar="CSV",
                   help="9k: MSRVTT_train.9k.csv; 1k-A: MSRVTT_JSFUSION_test.csv (default: that file beside --source)")


def _msvd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mapping", required=True, metavar="TXT",
                   help="MSVD's youtube_mapping.txt: '<clip_name> vid<N>' per line, naming video_id N's clip")


FORMATS: dict[str, _Format] = {
    "webvid": _Format(
        "pretrain", "VIOLET pre-training on WebVid (results CSV + downloaded videos); rows whose video was never "
                    "downloaded are skipped and counted",
        "WebVid results_*.csv (videoid,name,page_idx,page_dir,duration,contentUrl)", "videos",
        "the videos folder of WebVid's download.py, holding <page_dir>/<videoid>.mp4", "read_webvid"),
    "cc3m": _Format(
        "pretrain", "VIOLET pre-training on Conceptual Captions images (T = 1 clips) downloaded by img2dataset; "
                    "lines whose image was not downloaded are skipped and counted",
        "CC3M TSV of caption<TAB>url, no header (Train_GCC-training.tsv, Validation_GCC-1.1.0-Validation.tsv)",
        "images", "img2dataset's --output_folder (--output_format files): 00000/<key>.jpg + <key>.json",
        "read_cc3m"),
    "msrvtt": _Format(
        "retrieval", "VIOLET text-to-video retrieval on MSR-VTT (MSRVTT_data.json + video<N>.mp4)",
        "MSRVTT_data.json (videos with split, sentences with video_id and caption)", "videos",
        "the folder of video0.mp4 ... video9999.mp4", "read_msrvtt",
        lambda args: {"split": args.split, "split_csv": args.split_csv}, _msrvtt_args,
        split_help="train | val | test: the official split (the json's split field, every caption); 9k: the videos "
                   "of MSRVTT_train.9k.csv, every caption (a train dataset); 1k-A: MSRVTT_JSFUSION_test.csv, one "
                   "sentence per video (a test dataset)"),
    "msrvtt-qa": _Format(
        "oeqa", "VIOLET open-ended video QA on MSRVTT-QA ({train,val,test}_qa.json + video<id>.mp4)",
        "MSRVTT-QA {train,val,test}_qa.json: a list of question, answer, video_id (int), id, category_id", "videos",
        "the folder of MSR-VTT's video<N>.mp4", "read_msrvtt_qa"),
    "msvd-qa": _Format(
        "oeqa", "VIOLET open-ended video QA on MSVD-QA ({train,val,test}_qa.json + youtube_mapping.txt + "
                "YouTubeClips/*.avi)",
        "MSVD-QA {train,val,test}_qa.json: a list of question, answer, video_id (int), id", "videos",
        "MSVD's YouTubeClips folder of <clip_name>.avi", "read_msrvtt_qa", lambda args: {"mapping": args.mapping},
        _msvd_args),
    "tgif-qa": _Format(
        "qa", "VIOLET video QA on TGIF-QA: action and transition multiple-choice, frameqa and count open-ended",
        "TGIF-QA {Train,Test}_{action,transition,frameqa,count}_question.csv (tab-separated, header)", "gifs",
        "the folder of <gif_name>.gif", "read_tgif_qa"),
    "mcqa": _Format("mcqa", "VIOLET multiple-choice video QA from plain JSON Lines",
                    "JSON Lines of video, question, options, answer index", "videos",
                    "the folder of <video>.mp4|.avi|.mkv|.webm|.gif files", "read_mcqa"),
    "oeqa": _Format("oeqa", "VIOLET open-ended video QA from plain JSON Lines",
                    "JSON Lines of video, question, answer text", "videos",
                    "the folder of <video>.mp4|.avi|.mkv|.webm|.gif files", "read_oeqa"),
}


def _args(fmt: str, p: argparse.ArgumentParser) -> None:
    from .data import FINETUNE_FRAMES, PRETRAIN_FRAMES

    spec = FORMATS[fmt]
    images = fmt == "cc3m"
    p.add_argument("--source", required=True, help=f"{spec.source} (local or s3://)")
    p.add_argument(f"--{spec.media}", required=True, metavar="FOLDER", help=f"{spec.media_help} (local or s3://)")
    if spec.add is not None:
        spec.add(p)
    p.add_argument("--out", required=True, help="folder or s3:// URI for the one dataset of --split")
    if fmt == "msrvtt":
        from .importers import MSRVTT_SPLITS

        p.add_argument("--split", required=True, choices=list(MSRVTT_SPLITS), help=spec.split_help)
    else:
        p.add_argument("--split", required=True, help=spec.split_help)
    default_frames = 1 if images else PRETRAIN_FRAMES if spec.kind == "pretrain" else FINETUNE_FRAMES
    if not images:
        p.add_argument("--frames", type=int, default=default_frames, metavar="T",
                       help=f"frames sampled per video, the middle of T equal segments (default {default_frames})")
    p.add_argument("--size", type=int, default=224, help="frames are resized to SIZE x SIZE px (default 224)")
    if spec.kind == "pretrain":
        p.add_argument("--vq-tokenizer", required=True, metavar="PATH",
                       help="diffusers VQModel whose codes become the masked visual-token targets: a "
                            "save_pretrained folder, local or s3://, or a hub id")
        p.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"),
                       help="visual-token grid per frame (default SIZE/32 per side: the model's 32 px patch grid, "
                            "7 7 at 224 px)")
    if spec.kind in ("oeqa", "qa"):
        only = " (frameqa and count)" if spec.kind == "qa" else ""
        p.add_argument("--answers-from", metavar="TRAIN_URI",
                       help=f"reuse the answer vocabulary of this train dataset{only} (required for splits other "
                            "than train)")
        p.add_argument("--top-k", type=int, default=1000,
                       help=f"train{only}: answer vocabulary size, the K most frequent answers (default 1000)")
    p.add_argument("--skip-bad", action="store_true", help="log and skip malformed rows and unreadable videos")
    p.add_argument("--local", action="store_true",
                   help="decode in this process, without Ray (default: a Ray Data actor pool on the cluster at "
                        "RAY_ADDRESS, or a local one)")
    p.add_argument("--concurrency", type=int,
                   help="actors in the pool (default: one per GPU for pre-training on GPUs, else one per two CPUs)")
    cliargs.add_restart(p)
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
    """Read a VIOLET source, then decode, sample and pack its videos into one dataset."""
    from .importers import MSRVTT_SPLITS, TGIF_TASKS, tgif_task
    from .ingest import ingest

    spec = FORMATS[fmt]
    kind, split = spec.kind, args.split
    if fmt == "msrvtt":
        split = MSRVTT_SPLITS[args.split][0]  # 9k -> train, 1k-A -> test
    if kind == "qa":
        kind = "mcqa" if TGIF_TASKS[tgif_task(args.source)][0] else "oeqa"
    opts = cliargs.storage_options(args)
    n_frames = 1 if fmt == "cc3m" else args.frames
    if n_frames < 1:
        raise PolymodalError(f"--frames {n_frames}: sample at least one frame per video")
    grid = (1, 1)  # the vt_codes grid; only pretrain datasets have that column
    if kind == "pretrain":
        from polymodal.cache import local_copy

        vq = local_copy(args.vq_tokenizer, opts)  # an s3:// folder comes down once; a hub id passes through
        local = os.path.isabs(vq) or vq.startswith(".") or os.path.exists(vq)  # else a hub id
        if local and not os.path.isfile(os.path.join(vq, "config.json")):
            raise PolymodalError(f"--vq-tokenizer {args.vq_tokenizer}: no config.json there; pass a folder written "
                                 "by VQModel.save_pretrained (local or s3://) or a hub id")
        args.vq_tokenizer = vq
        grid = _grid(args)
    answers = None
    if kind == "oeqa":
        if args.answers_from:
            from polymodal import shards

            answers = shards.open_dataset(args.answers_from, opts).meta.get("answer_vocab")
            if not answers:
                raise PolymodalError(f"--answers-from {args.answers_from}: its manifest has no answer_vocab; pass "
                                     f"the train dataset written by `data import --format {fmt} --split train`")
        elif split != "train":
            raise PolymodalError(f"--format {fmt} --split {args.split}: pass --answers-from TRAIN_URI (the train "
                                 "dataset) so every split indexes the same answer vocabulary; only train builds its "
                                 "own")
    elif getattr(args, "answers_from", None):
        raise PolymodalError(f"--answers-from: {args.source} is a multiple-choice TGIF-QA task, which has no answer "
                             "vocabulary; drop --answers-from")
    # read and check every row before Ray starts: a bad file fails in seconds
    parsed = spec.read(args, opts)
    if not args.local:
        cliargs.init_ray()
    manifest = ingest(parsed, args.out, kind=kind, split=split, n_frames=n_frames, size=args.size,
                      tokenizer_path=getattr(args, "vq_tokenizer", None), answers=answers,
                      top_k=getattr(args, "top_k", 1000), use_ray=not args.local, grid=grid,
                      concurrency=args.concurrency, opts=opts, skip_bad=args.skip_bad, progress=not args.quiet,
                      resume=not args.restart)
    missing = f"; {parsed.missing} rows whose {'image' if fmt == 'cc3m' else 'video'} was never downloaded" \
        if fmt in ("webvid", "cc3m") else ""
    print(f"{manifest.split}: {args.out} ({manifest.num_rows} rows, {kind}, T={n_frames}; skipped "
          f"{parsed.skipped} bad source rows and {manifest.meta['skipped']} unreadable files{missing})")


def import_formats() -> list[Command]:
    """One ``data import`` format per released layout (and the plain QA files)."""
    return [Command(fmt, spec.help, partial(_args, fmt), partial(_run, fmt)) for fmt, spec in FORMATS.items()]
