"""Wander's command-line commands: ``data import --format mmsa | food101``."""

from __future__ import annotations

import argparse

from polymodal import cliargs
from polymodal.registry import Command


def _common(p: argparse.ArgumentParser, source_help: str) -> None:
    p.add_argument("--source", required=True, help=source_help)
    p.add_argument("--out", required=True, help="folder or s3:// URI for the train/val/test splits")
    p.add_argument("--skip-bad", action="store_true", help="log and skip malformed rows instead of failing")
    cliargs.add_config(p, required=False)


def _mmsa_args(p: argparse.ArgumentParser) -> None:
    _common(p, "the MMSA pickle file (e.g. aligned_50.pkl), local or s3://")


def _run_mmsa(args: argparse.Namespace) -> None:
    from .importers import import_mmsa

    cliargs.print_uris(import_mmsa(args.source, args.out, opts=cliargs.storage_options(args),
                                   skip_bad=args.skip_bad, progress=not args.quiet))


def _food101_args(p: argparse.ArgumentParser) -> None:
    _common(p, "the dataset root folder (the MMBT JSON files and the images)")
    p.add_argument("--tokenizer", required=True, metavar="PATH_OR_HUB_ID", help="the text backbone's tokenizer")


def _run_food101(args: argparse.Namespace) -> None:
    from .importers import import_food101

    cliargs.print_uris(import_food101(args.source, args.out, tokenizer=args.tokenizer,
                                      opts=cliargs.storage_options(args), skip_bad=args.skip_bad,
                                      progress=not args.quiet))


MMSA = Command("mmsa", "CMU-MOSI / MOSEI as the MMSA pickle (train/valid/test of text, audio, vision, labels)",
               _mmsa_args, _run_mmsa)
FOOD101 = Command("food101", "UPMC Food-101 in the MMBT JSON form + images", _food101_args, _run_food101)
