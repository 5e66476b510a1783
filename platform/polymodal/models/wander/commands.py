"""Wander's command-line commands: ``data import --format mmsa | iemocap | food101 | msrvtt-mmt``."""

from __future__ import annotations

import argparse

from polymodal import cliargs
from polymodal.registry import Command


def _common(p: argparse.ArgumentParser, source_help: str) -> None:
    p.add_argument("--source", required=True, help=source_help)
    p.add_argument("--out", required=True, help="folder or s3:// URI for the train/val/test splits")
    p.add_argument("--skip-bad", action="store_true", help="log and skip malformed rows instead of failing")
    cliargs.add_restart(p, "the splits it finished")
    cliargs.add_config(p, required=False)


def _mmsa_args(p: argparse.ArgumentParser) -> None:
    _common(p, "the MMSA pickle file (e.g. aligned_50.pkl), local or s3://")


def _run_mmsa(args: argparse.Namespace) -> None:
    from .importers import import_mmsa

    cliargs.print_uris(import_mmsa(args.source, args.out, opts=cliargs.storage_options(args),
                                   skip_bad=args.skip_bad, progress=not args.quiet, resume=not args.restart))


def _iemocap_args(p: argparse.ArgumentParser) -> None:
    _common(p, "Multimodal-Transformer's iemocap_data.pkl (aligned) or iemocap_data_noalign.pkl, local or "
               "s3://; only numpy arrays and dicts are unpickled")


def _run_iemocap(args: argparse.Namespace) -> None:
    from .importers import import_iemocap

    cliargs.print_uris(import_iemocap(args.source, args.out, opts=cliargs.storage_options(args),
                                      skip_bad=args.skip_bad, progress=not args.quiet, resume=not args.restart))


def _food101_args(p: argparse.ArgumentParser) -> None:
    _common(p, "the dataset root folder, local or s3://: UPMC's texts/{train,test}_titles.csv + "
               "images/{train,test}/<class>/, or MMBT's train/dev/test.json(l) + images")
    p.add_argument("--tokenizer", required=True, metavar="PATH_OR_HUB_ID", help="the text backbone's tokenizer")
    p.add_argument("--layout", choices=("auto", "upmc", "mmbt"), default="auto",
                   help="upmc: UPMC Food-101's title CSVs; mmbt: MMBT's JSON files; auto (default): upmc when "
                        "texts/train_titles.csv exists, else mmbt")
    p.add_argument("--image-size", type=int, default=224, help="side of the stored square RGB images (default 224)")
    p.add_argument("--max-text-len", type=int, default=40, help="token ids per title (default 40)")
    p.add_argument("--val-size", type=int, default=5000,
                   help="upmc: train rows moved to val, as MMBT's 5,000 (default 5000; 0: no val split)")
    p.add_argument("--seed", type=int, default=0, help="upmc: seed that draws the val rows (default 0)")


def _run_food101(args: argparse.Namespace) -> None:
    from .importers import import_food101

    cliargs.print_uris(import_food101(args.source, args.out, tokenizer=args.tokenizer, layout=args.layout,
                                      image_size=args.image_size, max_text_len=args.max_text_len,
                                      val_size=args.val_size, seed=args.seed, opts=cliargs.storage_options(args),
                                      skip_bad=args.skip_bad, progress=not args.quiet, resume=not args.restart))


def _msrvtt_args(p: argparse.ArgumentParser) -> None:
    from .importers import MMT_EXPERTS

    _common(p, "the MSRVTT folder of MMT's MSRVTT.tar.gz (symlinked-feats/ with the jsfusion split lists, "
               "vid_feat_files/mult_h5/ with one HDF5 per video), local or s3://")
    p.add_argument("--tokenizer", required=True, metavar="PATH_OR_HUB_ID", help="the text backbone's tokenizer")
    p.add_argument("--experts", default=",".join(MMT_EXPERTS),
                   help=f"comma-separated experts to keep (default all: {','.join(MMT_EXPERTS)})")
    p.add_argument("--expert-tokens", type=int, default=30,
                   help="feature rows kept per expert, zero-padded with a <expert>_mask column (MMT: 30)")
    p.add_argument("--max-text-words", type=int, default=30, help="caption words and token ids (MMT: 30)")
    p.add_argument("--train-captions", type=int, default=1,
                   help="captions per training video, one row each (each repeats the video's features; default 1)")
    p.add_argument("--val-size", type=int, default=None,
                   help="training videos held out as val (default: as many as the test list, MMT's cut; 0: none)")


def _run_msrvtt(args: argparse.Namespace) -> None:
    from .importers import import_msrvtt_mmt

    cliargs.print_uris(import_msrvtt_mmt(
        args.source, args.out, tokenizer=args.tokenizer, experts=cliargs.names(args.experts),
        expert_tokens=args.expert_tokens, max_text_words=args.max_text_words, train_captions=args.train_captions,
        val_size=args.val_size, opts=cliargs.storage_options(args), skip_bad=args.skip_bad,
        progress=not args.quiet, resume=not args.restart))


MMSA = Command("mmsa", "CMU-MOSI / MOSEI as the MMSA pickle (train/valid/test of text, audio, vision, labels)",
               _mmsa_args, _run_mmsa)
IEMOCAP = Command("iemocap", "IEMOCAP as Multimodal-Transformer's pickle (text, audio, vision; four binary "
                             "emotion targets: neutral, happy, sad, angry) for wander.multilabel",
                  _iemocap_args, _run_iemocap)
FOOD101 = Command("food101", "UPMC Food-101 (image + page title, 101 classes) in UPMC's own layout or MMBT's "
                             "JSON form, for wander.classification", _food101_args, _run_food101)
MSRVTT_MMT = Command("msrvtt-mmt", "MSR-VTT with MMT's seven expert features (per-video HDF5, jsfusion splits) "
                                   "for wander.retrieval", _msrvtt_args, _run_msrvtt)
