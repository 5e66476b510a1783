"""fMRI's command-line commands: ``data import --format huth | huth-pkl | fmri-plain`` and ``data mlm``."""

from __future__ import annotations

import argparse
import json

from polymodal import cliargs
from polymodal.registry import Command


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="ROOT",
                   help="the dataset's root folder, local or s3:// (s3:// response files are downloaded once "
                        "into the local cache, $POLYMODAL_CACHE)")
    p.add_argument("--out", required=True, help="folder or s3:// URI for the imported dataset")
    p.add_argument("--voxel-chunk", type=int, default=4096, help="voxels per stored response chunk (default 4096)")
    cliargs.add_restart(p, "its finished voxel chunks")
    cliargs.add_config(p, required=False)


def _choice_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subjects", metavar="S1,S2", help="subjects to import (default: every subject folder); "
                                                        "each needs responses for every chosen story")
    p.add_argument("--stories", metavar="S1,S2", help="stories to import (default: all)")


def _huth_args(p: argparse.ArgumentParser) -> None:
    _import_args(p)
    _choice_args(p)


def _window(text: str) -> tuple[int, int]:
    try:
        before, after = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,END (two TR counts), got {text!r}") from None
    if before < 0 or after < 0:
        raise argparse.ArgumentTypeError(f"TR counts must be >= 0, got {text!r}")
    return before, after


def _pickle_args(p: argparse.ArgumentParser) -> None:
    _import_args(p)
    _choice_args(p)
    p.add_argument("--response-window", type=_window, default=(10, 5), metavar="START,END",
                   help="TRs of the feature clock (the pickle's tr_times) before the first and after the last "
                        "response row (default 10,5: the .npy files are ds003020's rows, which the Huth lab's "
                        "code lines up with features [10:-5])")


def _run_import(args: argparse.Namespace) -> None:
    from . import importers

    common = {"chunk": args.voxel_chunk, "opts": cliargs.storage_options(args), "progress": not args.quiet,
              "resume": not args.restart}
    if args.format == "fmri-plain":
        out = importers.import_plain(args.source, args.out, **common)
    else:
        choice = {"subjects": cliargs.names(args.subjects) or None, "stories": cliargs.names(args.stories) or None}
        if args.format == "huth":
            out = importers.import_huth(args.source, args.out, **choice, **common)
        else:
            out = importers.import_huth_pickle(args.source, args.out, response_window=args.response_window,
                                               **choice, **common)
    print(json.dumps(out, indent=2))


HUTH = Command(
    "huth", "OpenNeuro ds003020 derivative/ as released: TextGrids/<story>.TextGrid, respdict.json and "
            "preprocessed_data/<subject>/<story>.hf5 (respdict - 20 rows, features [10:-5] of the lab's clock)",
    _huth_args, _run_import,
    description="OpenNeuro ds003020's derivative/ folder as released. Words come from tier 1 of "
                "TextGrids/<story>.TextGrid (the lab's non-word tokens such as {SP}, {LG}, sp dropped, "
                "lower-cased); each story's feature clock is the lab's respdict[story] - 5 TRs of 2 s from "
                "10 s before the audio; preprocessed_data/<subject>/<story>.hf5 (dataset data, TRs x voxels) "
                "must hold respdict[story] - 20 rows, the clock's TRs 10 to 5 before its end, where the lab's "
                "code puts them. Every chosen subject needs every chosen story (--subjects, --stories).")
HUTH_PKL = Command(
    "huth-pkl", "the Stat 214 lab report's data: raw_text.pkl (story -> the Huth lab's DataSequence) and "
                "<subject>/<story>.npy responses (TRs x voxels)",
    _pickle_args, _run_import,
    description="The Stat 214 lab report's data folder: raw_text.pkl, a dict story -> the Huth lab's "
                "ridge_utils DataSequence (data: words, data_times: word midpoints, tr_times: TR midpoints), "
                "and one folder per subject (every folder holding .npy files, e.g. subject2/) with "
                "<story>.npy responses (TRs x voxels, len(tr_times) - 15 rows). The pickle is read through "
                "an allow-listed unpickler (DataSequence, builtin containers, numpy arrays; any other "
                "class is refused): this blocks the usual payloads but does not make a hostile file safe, "
                "so import files you trust.")
PLAIN = Command(
    "fmri-plain", "words.csv|parquet + stories.json (n_trs, tr, optional start_time, response_start, "
                  "response_end) + responses/<subject>/<story>.npy|hf5",
    _import_args, _run_import)


def _mlm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="FMRI_ROOT", help="dataset root written by data import")
    p.add_argument("--out", required=True, metavar="URI", help="writes tokenizer/, train/ and val/ here")
    p.add_argument("--exclude", metavar="S1,S2", help="stories kept out entirely (the fMRI test stories)")
    p.add_argument("--val-stories", metavar="S1,S2", help="stories for the validation split")
    p.add_argument("--vocab-size", type=int, default=8000, help="WordPiece vocabulary trained on the training "
                                                                 "stories (unused with --tokenizer)")
    p.add_argument("--tokenizer", metavar="ID|FOLDER|URI",
                   help="use this pretrained WordPiece tokenizer (a hub id such as bert-base-uncased, or a "
                        "folder / s3:// URI holding tokenizer files) instead of training one; it is copied "
                        "to OUT/tokenizer")
    p.add_argument("--max-length", type=int, default=256, help="tokens per window (the paper preset: 256)")
    cliargs.add_config(p, required=False)


def _run_mlm(args: argparse.Namespace) -> None:
    from .mlm import prepare_from_fmri

    cliargs.print_uris(prepare_from_fmri(
        args.source, args.out, exclude=cliargs.names(args.exclude), val_stories=cliargs.names(args.val_stories),
        vocab_size=args.vocab_size, max_length=args.max_length, tokenizer=args.tokenizer,
        opts=cliargs.storage_options(args),
        progress=not args.quiet))


MLM = Command(
    "mlm", "fmri.mlm training data: a WordPiece tokenizer (trained, or a pretrained one with --tokenizer) and "
           "token windows from an fMRI dataset's transcripts",
    _mlm_args, _run_mlm)
