"""ChefFusion's command-line commands: ``data import --format recipe1m`` and ``data features``."""

from __future__ import annotations

import argparse

from polymodal import cliargs
from polymodal.registry import Command


def _splits(text: str) -> list[str]:
    """``--splits``: comma-separated, distinct names of Recipe1M partitions."""
    from .data import SPLITS

    names = cliargs.names(text)
    if not names or len(set(names)) != len(names) or any(n not in SPLITS for n in names):
        raise argparse.ArgumentTypeError(f"expected distinct names from {','.join(SPLITS)}, got {text!r}")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _recipe1m_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="ROOT",
                   help="Recipe1M folder or s3:// prefix holding layer1.json and layer2.json (and det_ingrs.json "
                        "for --ingredients det_ingrs)")
    p.add_argument("--images", help="root of the image tree: <images>/<partition>/a/b/c/d/<id>.jpg as the Recipe1M "
                                    "tars extract, Recipe1M+'s <images>/a/b/c/d/<id>.jpg, or flat "
                                    "(default SOURCE/images)")
    p.add_argument("--out", required=True, help="folder or s3:// URI: raw shards go to OUT/raw/<split>")
    p.add_argument("--splits", type=_splits, default="train,val,test", metavar="NAMES",
                   help="partitions to import, comma-separated (default train,val,test). The split is layer1's "
                        "own 'partition', keeping the recipes layer2 lists with an image, as ChefFusion's "
                        "recipe1m_processing.py does")
    p.add_argument("--ingredients", choices=["layer1", "det_ingrs"], default="layer1",
                   help="ingredient lines: layer1's, with quantities, as ChefFusion trains on them (default), or "
                        "det_ingrs.json's valid detected names merged by recipe id, as im2recipe does")
    p.add_argument("--max-per-split", type=_positive, metavar="N",
                   help="write at most N recipes per split (the first ones with an image, in layer1 order)")
    p.add_argument("--skip-bad", action="store_true",
                   help="log, count and skip bad recipes (malformed fields or entries, images missing or "
                        "undecodable) instead of failing")
    cliargs.add_restart(p)
    cliargs.add_config(p, required=False)


def _run_recipe1m(args: argparse.Namespace) -> None:
    from .importers import import_recipe1m

    cliargs.print_uris(import_recipe1m(args.source, args.out, images=args.images, splits=args.splits,
                                       ingredients=args.ingredients, max_per_split=args.max_per_split,
                                       opts=cliargs.storage_options(args), skip_bad=args.skip_bad,
                                       progress=not args.quiet, resume=not args.restart))


RECIPE1M = Command(
    "recipe1m", "Recipe1M (or Recipe1M+) as released: layer1.json + layer2.json [+ det_ingrs.json] + image tree -> "
                "raw shards at OUT/raw/<split>, one recipe and its first listed image found on disk per row (then run "
                "`polymodal data features`); a rerun continues an interrupted import (--restart starts over)",
    _recipe1m_args, _run_recipe1m)


def _features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="raw dataset (from data import --format recipe1m, or synth's raw/)")
    p.add_argument("--out", required=True, help="folder or s3:// URI for the feature dataset")
    p.add_argument("--clip", required=True, help="CLIP vision model: a save_pretrained folder, an s3:// folder or a hub id "
                   "(the paper: openai/clip-vit-large-patch14)")
    p.add_argument("--sd", required=True, help="Stable Diffusion pipeline: a folder, an s3:// folder or a hub id "
                   "(the paper: SD 1.5, stable-diffusion-v1-5/stable-diffusion-v1-5); its text encoder is used")
    p.add_argument("--batch-size", type=int, default=64, help="rows per extractor call (default 64)")
    p.add_argument("--concurrency", type=int, help="actors in the pool (default: one per GPU, or one per two CPUs)")
    p.add_argument("--target-dtype", choices=["float16", "float32"], default="float16",
                   help="storage type of the SD targets (float16 halves the bytes)")
    p.add_argument("--local", action="store_true", help="run the extractor in this process, without Ray")
    cliargs.add_config(p, required=False)


def _run_features(args: argparse.Namespace) -> None:
    from .features import extract_features

    opts = cliargs.storage_options(args)
    if not args.local:
        cliargs.init_ray()
    manifest = extract_features(args.source, args.out, clip=args.clip, sd=args.sd, opts=opts,
                                batch_size=args.batch_size, use_ray=not args.local, concurrency=args.concurrency,
                                target_dtype=args.target_dtype, progress=not args.quiet)
    print(f"{manifest.split}: {args.out} ({manifest.num_rows} rows)")


FEATURES = Command(
    "features", "ChefFusion: raw recipe shards -> feature shards (CLIP image features and SD text-encoder targets), "
                "with a Ray Data actor pool (GPU per actor when the cluster has GPUs)", _features_args, _run_features)
