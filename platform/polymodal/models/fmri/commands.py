"""fMRI's command-line commands: ``data import --format huth | fmri-plain`` and ``data mlm``."""

from __future__ import annotations

import argparse
import json

from polymodal import cliargs
from polymodal.registry import Command


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="ROOT", help="the dataset's root folder (local or s3://)")
    p.add_argument("--out", required=True, help="folder or s3:// URI for the imported dataset")
    p.add_argument("--voxel-chunk", type=int, default=4096, help="voxels per stored response chunk (default 4096)")
    cliargs.add_config(p, required=False)


def _run_import(args: argparse.Namespace) -> None:
    from . import importers

    run = importers.import_huth if args.format == "huth" else importers.import_plain
    print(json.dumps(run(args.source, args.out, chunk=args.voxel_chunk, opts=cliargs.storage_options(args),
                         progress=not args.quiet), indent=2))


HUTH = Command(
    "huth", "OpenNeuro ds003020 derivative/: TextGrids, respdict.json, preprocessed_data/<subject>/<story>.hf5",
    _import_args, _run_import)
PLAIN = Command(
    "fmri-plain", "words.csv|parquet + stories.json + responses/<subject>/<story>.npy|hf5",
    _import_args, _run_import)


def _mlm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="FMRI_ROOT", help="dataset root written by data import")
    p.add_argument("--out", required=True, metavar="URI", help="writes tokenizer/, train/ and val/ here")
    p.add_argument("--exclude", metavar="S1,S2", help="stories kept out entirely (the fMRI test stories)")
    p.add_argument("--val-stories", metavar="S1,S2", help="stories for the validation split")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-length", type=int, default=256, help="tokens per window (the paper preset: 256)")
    cliargs.add_config(p, required=False)


def _run_mlm(args: argparse.Namespace) -> None:
    from .mlm import prepare_from_fmri

    cliargs.print_uris(prepare_from_fmri(
        args.source, args.out, exclude=cliargs.names(args.exclude), val_stories=cliargs.names(args.val_stories),
        vocab_size=args.vocab_size, max_length=args.max_length, opts=cliargs.storage_options(args),
        progress=not args.quiet))


MLM = Command(
    "mlm", "fmri.mlm training data: a WordPiece tokenizer and token windows from an fMRI dataset's transcripts",
    _mlm_args, _run_mlm)
