"""ChefFusion's command-line commands: ``data import --format recipe1m`` and ``data features``."""

from __future__ import annotations

import argparse

from polymodal import cliargs
from polymodal.registry import Command


def _recipe1m_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="ROOT", help="folder holding layer1.json and layer2.json")
    p.add_argument("--images", help="root of the image tree (default SOURCE/images)")
    p.add_argument("--out", required=True, help="folder or s3:// URI: raw shards go to OUT/raw/<split>")
    p.add_argument("--skip-bad", action="store_true", help="log and skip malformed recipes instead of failing")
    cliargs.add_config(p, required=False)


def _run_recipe1m(args: argparse.Namespace) -> None:
    from .importers import import_recipe1m

    cliargs.print_uris(import_recipe1m(args.source, args.out, images=args.images, opts=cliargs.storage_options(args),
                                       skip_bad=args.skip_bad, progress=not args.quiet))


RECIPE1M = Command(
    "recipe1m", "Recipe1M: layer1.json + layer2.json + image tree -> raw shards at OUT/raw/<split> (then run "
                "`polymodal data features`)", _recipe1m_args, _run_recipe1m)


def _features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="raw dataset (from data import --format recipe1m, or synth's raw/)")
    p.add_argument("--out", required=True, help="folder or s3:// URI for the feature dataset")
    p.add_argument("--clip", required=True, help="CLIP vision model folder (save_pretrained) or s3:// URI")
    p.add_argument("--sd", required=True, help="Stable Diffusion pipeline folder or s3:// URI (its text encoder is used)")
    p.add_argument("--batch-size", type=int, default=64)
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
