"""``polymodal``: the command line. Every command that reads a config takes ``--config``
(a path or ``s3://`` URI) and repeated ``--set dotted.key=value`` overrides."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from polymodal.errors import PolymodalError


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, metavar="PATH_OR_URI",
                   help="experiment YAML (local path or s3:// URI)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted path, e.g. --set optim.lr=1e-3 (repeatable)")


def _load(args):
    from polymodal.config import load_config

    return load_config(args.config, args.overrides)


def cmd_data_synth(args) -> None:
    from polymodal.registry import get_task, task_names

    storage_opts = None
    task_name = args.task
    if args.config:
        cfg = _load(args)
        storage_opts, task_name = cfg.storage, task_name or cfg.task
    if not task_name:
        raise PolymodalError(f"give --task (one of {', '.join(task_names())}) or --config")
    try:
        task = get_task(task_name)
    except KeyError:
        raise PolymodalError(f"unknown task {task_name!r}; known: {', '.join(task_names())}") from None
    out = task.synth(args.out, seed=args.seed, scale=args.scale, storage=storage_opts, progress=not args.quiet)
    for name, uri in out.items():
        print(f"{name}: {uri}")


#: VIOLET source formats: (importer in polymodal.models.violet.importers, dataset kind)
VIOLET_FORMATS = {
    "webvid": ("read_webvid_csv", "pretrain"),
    "cc": ("read_cc_tsv", "pretrain"),  # images: T=1 clips
    "msrvtt": ("read_msrvtt_json", "retrieval"),
    "mcqa": ("read_mcqa", "mcqa"),
    "oeqa": ("read_oeqa", "oeqa"),
}


def cmd_data_import(args) -> None:
    from polymodal.models.wander import importers

    storage_opts = _load(args).storage if args.config else None
    if args.format in VIOLET_FORMATS:
        _import_violet(args, storage_opts)
        return
    if args.format in ("huth", "fmri-plain"):
        from polymodal.models.fmri import importers as fmri_importers

        run = fmri_importers.import_huth if args.format == "huth" else fmri_importers.import_plain
        print(json.dumps(run(args.source, args.out, chunk=args.voxel_chunk, opts=storage_opts,
                             progress=not args.quiet), indent=2))
        return
    if args.format == "recipe1m":
        from polymodal.models.cheffusion.importers import import_recipe1m

        out = import_recipe1m(args.source, args.out, images=args.images, opts=storage_opts, skip_bad=args.skip_bad,
                              progress=not args.quiet)
    elif args.format == "mmsa":
        out = importers.import_mmsa(args.source, args.out, opts=storage_opts, skip_bad=args.skip_bad,
                                    progress=not args.quiet)
    else:
        if not args.tokenizer:
            raise PolymodalError("--format food101 needs --tokenizer PATH_OR_HUB_ID")
        out = importers.import_food101(args.source, args.out, tokenizer=args.tokenizer, opts=storage_opts,
                                       skip_bad=args.skip_bad, progress=not args.quiet)
    for name, uri in out.items():
        print(f"{name}: {uri}")


def _violet_grid(args) -> tuple[int, int]:
    """The visual-token grid per frame: ``--grid``, else the model's patch grid at ``--size``."""
    if args.grid:
        rows, cols = args.grid
        if rows < 1 or cols < 1:
            raise PolymodalError(f"--grid {rows} {cols}: both sides must be positive")
        return rows, cols
    from polymodal.models.violet.config import VioletConfig

    # the MVM targets must lie on the patch grid the model sees (7 x 7 for 224 px, 32 px patches)
    patch = VioletConfig.model_fields["patch_size"].default
    if args.size % patch:
        raise PolymodalError(f"--size {args.size} is not a multiple of VIOLET's {patch} px patches, so the token "
                             f"grid cannot be derived; pass --grid ROWS COLS (image_size // patch_size of the model)")
    return args.size // patch, args.size // patch


def _import_violet(args, storage_opts) -> None:
    """Read a VIOLET source file, then decode, sample and pack its videos into one dataset."""
    from polymodal.models.violet import importers
    from polymodal.models.violet.data import FINETUNE_FRAMES, PRETRAIN_FRAMES
    from polymodal.models.violet.ingest import ingest

    reader, kind = VIOLET_FORMATS[args.format]
    fmt, images = args.format, args.format == "cc"
    if not args.split:
        raise PolymodalError(f"--format {fmt} writes one dataset: pass --split (e.g. train, val or test)")
    root = (args.images or args.videos) if images else args.videos
    if root is None and not images:
        raise PolymodalError(f"--format {fmt} needs --videos FOLDER, the folder holding <video id>.mp4 (or .avi, "
                             ".mkv, .webm) files")
    if args.frames is not None and args.frames < 1:
        raise PolymodalError(f"--frames {args.frames}: sample at least one frame per video")
    n_frames = args.frames or (1 if images else PRETRAIN_FRAMES if kind == "pretrain" else FINETUNE_FRAMES)
    if images and n_frames != 1:
        raise PolymodalError(f"--format cc: images are single-frame clips; drop --frames {n_frames} (or pass 1)")
    grid = (1, 1)  # the vt_codes grid; only pretrain datasets have that column
    if kind == "pretrain":
        if not args.vq_tokenizer:
            raise PolymodalError(f"--format {fmt} writes pre-training data with visual-token targets: pass "
                                 "--vq-tokenizer PATH, a diffusers VQModel folder (save_pretrained)")
        if not os.path.isfile(os.path.join(args.vq_tokenizer, "config.json")):
            raise PolymodalError(f"--vq-tokenizer {args.vq_tokenizer}: no config.json there; pass a local folder "
                                 "written by VQModel.save_pretrained")
        grid = _violet_grid(args)
    elif args.vq_tokenizer or args.grid:
        flag = "--vq-tokenizer" if args.vq_tokenizer else "--grid"
        raise PolymodalError(f"{flag} is for pre-training formats (webvid, cc), not --format {fmt}")
    answers = None
    if args.answers_from:
        if kind != "oeqa":
            raise PolymodalError(f"--answers-from is for --format oeqa, not --format {fmt}")
        from polymodal import shards

        answers = shards.open_dataset(args.answers_from, storage_opts).meta.get("answer_vocab")
        if not answers:
            raise PolymodalError(f"--answers-from {args.answers_from}: its manifest has no answer_vocab; pass the "
                                 "train dataset written by `data import --format oeqa --split train`")
    elif kind == "oeqa" and args.split != "train":
        raise PolymodalError(f"--format oeqa --split {args.split}: pass --answers-from TRAIN_URI (the oeqa train "
                             "dataset) so every split indexes the same answer vocabulary; only train builds its own")
    # parse and check every row before Ray starts: a bad file fails in seconds
    parsed = getattr(importers, reader)(args.source, root, skip_bad=args.skip_bad, opts=storage_opts)
    if not args.local:
        import ray

        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    manifest = ingest(parsed, args.out, kind=kind, split=args.split, n_frames=n_frames, size=args.size,
                      tokenizer_path=args.vq_tokenizer, answers=answers, top_k=args.top_k, use_ray=not args.local,
                      grid=grid, concurrency=args.concurrency, opts=storage_opts, skip_bad=args.skip_bad,
                      progress=not args.quiet)
    print(f"{manifest.split}: {args.out} ({manifest.num_rows} rows, {kind}, T={n_frames}; skipped "
          f"{parsed.skipped} bad source rows and {manifest.meta['skipped']} unreadable files)")


def cmd_data_features(args) -> None:
    from polymodal.models.cheffusion.features import extract_features

    storage_opts = _load(args).storage if args.config else None
    if not args.local:
        import ray

        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    manifest = extract_features(args.source, args.out, clip=args.clip, sd=args.sd, opts=storage_opts,
                                batch_size=args.batch_size, use_ray=not args.local, concurrency=args.concurrency,
                                target_dtype=args.target_dtype, progress=not args.quiet)
    print(f"{manifest.split}: {args.out} ({manifest.num_rows} rows)")


def cmd_data_mlm(args) -> None:
    from polymodal.models.fmri.mlm import prepare_from_fmri

    storage_opts = _load(args).storage if args.config else None
    out = prepare_from_fmri(args.source, args.out, exclude=_names(args.exclude), val_stories=_names(args.val_stories),
                            vocab_size=args.vocab_size, max_length=args.max_length, opts=storage_opts,
                            progress=not args.quiet)
    for name, uri in out.items():
        print(f"{name}: {uri}")


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def cmd_data_inspect(args) -> None:
    from polymodal import shards

    storage_opts = _load(args).storage if args.config else None
    shards.open_dataset(args.uri, storage_opts, verify=args.verify)
    print(shards.describe(args.uri, storage_opts))
    print(f"verified: {args.verify}")


def cmd_train(args) -> None:
    from polymodal.train.loop import fit, fit_local

    cfg = _load(args)
    summary = (fit_local if args.local else fit)(cfg, progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=str))
    print(f"run folder:  {cfg.run_uri}")
    print(f"checkpoint:  {summary.get('best_checkpoint')}")
    print(f"metrics csv: {cfg.run_uri}/logs/metrics.csv   tensorboard: {cfg.run_uri}/logs/tensorboard")


def cmd_tune(args) -> None:
    import yaml

    from polymodal.tune import load_space, run_sweep

    cfg = _load(args)
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PolymodalError(f"--param {item!r}: expected KEY=DISTRIBUTION, e.g. 'model.top_n={{choice: [1, 2]}}'")
        params[key.strip()] = yaml.safe_load(value)
    space = load_space(args.space, cfg, params)  # every dotted path is checked before Ray starts
    out = run_sweep(cfg, space, resume=not args.no_resume, progress=not args.quiet)
    if out.best_trial_id:
        print(f"best trial:  {out.best_trial_id}  {out.metric}={out.best_metric:.4g}  {json.dumps(out.best_values)}")
    print(f"sweep:       {out.sweep_uri}")
    print(f"table:       {out.results_md}  (csv: {out.results_csv})")
    print(f"best config: {out.best_config}")
    for key, uri in out.plots.items():
        print(f"plot:        {uri}")
    if not out.complete:
        print("sweep unfinished: run the same command again to resume it")


def cmd_evaluate(args) -> None:
    from polymodal.evaluate import evaluate_run

    out, uri = evaluate_run(_load(args), split=args.split, which=args.which, progress=not args.quiet)
    print(json.dumps(out, indent=2))
    print(f"written: {uri}")


def cmd_eval_qvhighlights(args) -> None:
    from polymodal import storage
    from polymodal.models.llavilo.qvh_eval import evaluate_files

    metrics = evaluate_files(args.submission, args.gt)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        storage.write_text(args.out, text + "\n")
        print(f"written: {args.out}", file=sys.stderr)


def cmd_report(args) -> None:
    from polymodal.report import write_report

    uri = write_report(_load(args), compare=args.compare or None)
    print(f"report: {uri}")


def cmd_params(args) -> None:
    from polymodal.config import apply_overrides, validate_config
    from polymodal.registry import get_task

    base = _load(args)
    variants = [[]]
    if args.vary:
        key, _, values = args.vary.partition("=")
        variants = [[f"{key}={v}"] for v in values.split(",") if v]
    print(f"{'variant':<28} {'trainable':>12} {'total':>12} {'trainable %':>12}")
    for extra in variants:
        cfg = validate_config(apply_overrides(base.to_dict(), extra)) if extra else base
        model = get_task(cfg.task).build_model(cfg.model)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        name = extra[0] if extra else "(config)"
        print(f"{name:<28} {n_train:>12,} {n_all:>12,} {100 * n_train / max(n_all, 1):>11.3f}%")


def cmd_deploy(args) -> None:
    from polymodal.serving.deploy import deploy

    for url in deploy(args.config, args.overrides):
        print(f"deployed: {url}  (routes: /healthz, /v1/models, /v1/predict)")


def cmd_s3_serve(args) -> None:
    from polymodal.s3server import serve_forever

    serve_forever(args.port, tuple(args.bucket))


def _quiet_parent() -> argparse.ArgumentParser:
    # -q works before or after the subcommand (`polymodal -q train` and `jobs/train.py -q`)
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polymodal",
        description="Train, tune, evaluate and serve multimodal research systems on Ray.",
        epilog="Example: polymodal data synth --task wander.classification --out data/wander && "
               "polymodal train --config jobs/configs/wander_tiny.yaml --set optim.epochs=2")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quiet = _quiet_parent()

    data = sub.add_parser("data", parents=[quiet], help="make, import and check datasets (Parquet shards + manifest.json)")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("synth", parents=[quiet], help="write synthetic train/val/test datasets with a planted signal")
    p.add_argument("--task", help="task name, e.g. wander.classification (default: the config's task)")
    p.add_argument("--out", required=True, help="folder or s3:// URI to write the splits into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the default row counts")
    _add_config(p, required=False)
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("import", parents=[quiet], help="convert a public dataset layout to shards")
    p.add_argument("--format", required=True,
                   choices=["mmsa", "food101", "huth", "fmri-plain", "recipe1m", *VIOLET_FORMATS],
                   help="mmsa: CMU-MOSI/MOSEI pickle; food101: UPMC-Food101 json + images; huth: OpenNeuro "
                        "ds003020 derivative/ (TextGrids, respdict.json, preprocessed_data); fmri-plain: "
                        "words.csv|parquet + stories.json + responses/<subject>/<story>.npy|hf5; recipe1m: "
                        "layer1.json + layer2.json + image tree -> raw ChefFusion shards at OUT/raw/<split> "
                        "(then run `polymodal data features`). VIOLET, one dataset of --split at OUT, frames "
                        "decoded, sampled and JPEG-packed: webvid: videoid,name CSV (pre-training, needs "
                        "--vq-tokenizer); cc: caption<TAB>image path TSV (pre-training on T=1 images, needs "
                        "--vq-tokenizer); msrvtt: JSON of video + caption (retrieval); mcqa: JSON Lines of video, "
                        "question, options, answer index; oeqa: JSON Lines of video, question, answer text")
    p.add_argument("--source", required=True,
                   help="the pickle file (mmsa), dataset root folder (food101, huth, fmri-plain, recipe1m) or "
                        "source file (webvid, cc, msrvtt, mcqa, oeqa)")
    p.add_argument("--images", help="recipe1m: root of the image tree (default SOURCE/images); cc: the folder the "
                                    "TSV's image paths are relative to (default: the TSV's folder)")
    p.add_argument("--videos", metavar="FOLDER",
                   help="webvid, msrvtt, mcqa, oeqa: the folder of <video id>.mp4|.avi|.mkv|.webm files (local or "
                        "s3://); cc: same as --images")
    p.add_argument("--voxel-chunk", type=int, default=4096, help="voxels per stored response chunk (fMRI)")
    p.add_argument("--out", required=True,
                   help="folder or s3:// URI for the splits (VIOLET formats: for the one dataset of --split)")
    p.add_argument("--tokenizer", help="tokenizer path or hub id (food101)")
    p.add_argument("--skip-bad", action="store_true",
                   help="log and skip malformed rows (VIOLET: also unreadable videos) instead of failing")
    p.add_argument("--split", help="VIOLET formats (required): the split name written in the manifest, e.g. train")
    p.add_argument("--frames", type=int, metavar="T",
                   help="VIOLET: frames sampled per video, the middle of T equal segments (default 4 for webvid, "
                        "5 for msrvtt, mcqa and oeqa, 1 for cc)")
    p.add_argument("--size", type=int, default=224, help="VIOLET: frames are resized to SIZE x SIZE px (default 224)")
    p.add_argument("--vq-tokenizer", metavar="PATH",
                   help="webvid, cc: diffusers VQModel folder (save_pretrained) whose codes become the masked "
                        "visual-token targets")
    p.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"),
                   help="webvid, cc: visual-token grid per frame (default SIZE/32 per side: the model's 32 px "
                        "patch grid, 7 7 at 224 px)")
    p.add_argument("--answers-from", metavar="TRAIN_URI",
                   help="oeqa: reuse the answer vocabulary of this train dataset (required for splits other than "
                        "train)")
    p.add_argument("--top-k", type=int, default=1000,
                   help="oeqa train: answer vocabulary size, the K most frequent answers (default 1000)")
    p.add_argument("--local", action="store_true",
                   help="VIOLET: decode in this process, without Ray (default: a Ray Data actor pool on the "
                        "cluster at RAY_ADDRESS, or a local one)")
    p.add_argument("--concurrency", type=int,
                   help="VIOLET: actors in the pool (default: one per GPU for pre-training on GPUs, else one per "
                        "two CPUs)")
    _add_config(p, required=False)
    p.set_defaults(func=cmd_data_import)
    p = dsub.add_parser("features", parents=[quiet],
                        help="ChefFusion: raw recipe shards -> feature shards (CLIP image features and SD text-encoder "
                             "targets), with a Ray Data actor pool (GPU per actor when the cluster has GPUs)")
    p.add_argument("--source", required=True, help="raw dataset (from data import --format recipe1m, or synth's raw/)")
    p.add_argument("--out", required=True, help="folder or s3:// URI for the feature dataset")
    p.add_argument("--clip", required=True, help="CLIP vision model folder (save_pretrained) or s3:// URI")
    p.add_argument("--sd", required=True, help="Stable Diffusion pipeline folder or s3:// URI (its text encoder is used)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--concurrency", type=int, help="actors in the pool (default: one per GPU, or one per two CPUs)")
    p.add_argument("--target-dtype", choices=["float16", "float32"], default="float16",
                   help="storage type of the SD targets (float16 halves the bytes)")
    p.add_argument("--local", action="store_true", help="run the extractor in this process, without Ray")
    _add_config(p, required=False)
    p.set_defaults(func=cmd_data_features)
    p = dsub.add_parser("mlm", parents=[quiet],
                        help="fmri.mlm training data: a WordPiece tokenizer and token windows from an fMRI dataset's "
                             "transcripts")
    p.add_argument("--source", required=True, metavar="FMRI_ROOT", help="dataset root written by data import")
    p.add_argument("--out", required=True, metavar="URI", help="writes tokenizer/, train/ and val/ here")
    p.add_argument("--exclude", metavar="S1,S2", help="stories kept out entirely (the fMRI test stories)")
    p.add_argument("--val-stories", metavar="S1,S2", help="stories for the validation split")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-length", type=int, default=256, help="tokens per window (the paper preset: 256)")
    _add_config(p, required=False)
    p.set_defaults(func=cmd_data_mlm)

    p = dsub.add_parser("inspect", parents=[quiet], help="validate a dataset and print its manifest")
    p.add_argument("uri", help="dataset folder or s3:// URI")
    p.add_argument("--verify", choices=["footer", "checksum"], default="checksum",
                   help="footer: sizes and schemas; checksum: also sha256 of every shard (default)")
    _add_config(p, required=False)
    p.set_defaults(func=cmd_data_inspect)

    p = sub.add_parser("train", parents=[quiet],
                       help="train with Ray Train + DeepSpeed, or fit a closed-form task (fmri.encoding) with Ray "
                            "tasks; resumes an existing run")
    _add_config(p)
    p.add_argument("--local", action="store_true", help="single process without Ray (CUDA if present)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("tune", parents=[quiet], help="hyperparameter sweep with Ray Tune (resumes an existing sweep)")
    _add_config(p)
    p.add_argument("--space", required=True, metavar="PATH_OR_URI",
                   help="search-space YAML, e.g. tune_spaces/wander.yaml")
    p.add_argument("--no-resume", action="store_true",
                   help="fail if a sweep of the same name exists instead of continuing it")
    p.add_argument("--param", action="append", default=[], metavar="KEY=DIST",
                   help="replace or add one search parameter (YAML flow), e.g. "
                        "'model.top_n={choice: [1, 2, 3]}'; repeatable")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("evaluate", parents=[quiet], help="evaluate a run's checkpoint on a split")
    _add_config(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--which", default="best", choices=["best", "latest"], help="which checkpoint")
    p.set_defaults(func=cmd_evaluate)
    ev = sub.add_parser("eval", parents=[quiet], help="score prediction files with a benchmark's official protocol")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    p = esub.add_parser(
        "qvhighlights", parents=[quiet],
        help="QVHighlights moment retrieval + highlight detection (official moment_detr standalone_eval protocol)",
        description="Score a QVHighlights submission the way the official evaluator "
                    "(jayleicn/moment_detr standalone_eval/eval.py) does. Moment retrieval: R1@0.5-0.95 of the "
                    "first listed window; mAP over IoU 0.5:0.05:0.95 of the top 10 windows, for all queries (full) "
                    "and for GT windows of short (0,10], middle (10,30] and long (30,150] seconds. Highlight "
                    "detection (when both files have saliency): mAP and Hit@1 per 2-s clip at Fair>=2, Good>=3, "
                    "VeryGood>=4. Prints the metrics as JSON, the 'brief' summary first; numbers are percentages. "
                    "The qids of the two files must match.")
    p.add_argument("--submission", required=True, metavar="PRED.jsonl",
                   help="predictions, one JSON object per query: qid, pred_relevant_windows [[st, ed, score], ...] "
                        "best first, pred_saliency_scores (local path or s3:// URI)")
    p.add_argument("--gt", required=True, metavar="GT.jsonl",
                   help="ground truth, e.g. highlight_val_release.jsonl (local path or s3:// URI)")
    p.add_argument("--out", metavar="METRICS.json", help="also write the metrics JSON here (local path or s3:// URI)")
    p.set_defaults(func=cmd_eval_qvhighlights)

    p = sub.add_parser("report", parents=[quiet], help="write a Markdown report with metric tables and a PNG curve")
    _add_config(p)
    p.add_argument("--compare", action="append", default=[], metavar="RUN_URI",
                   help="fmri.encoding: another fitted run (folder or s3:// URI) whose correlations the report "
                        "plots beside this run's, e.g. another feature space (repeatable)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("params", parents=[quiet],
                       help="trainable-parameter counts of the configured model (and variants)")
    _add_config(p)
    p.add_argument("--vary", metavar="KEY=V1,V2,...",
                   help="one row per value, e.g. --vary model.method=wander,lora,houlsby,full,none")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("deploy", parents=[quiet],
                       help="deploy Serve applications from a serve config YAML onto the running cluster")
    p.add_argument("--config", required=True, metavar="PATH_OR_URI", help="Serve config, e.g. serve/config.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="APP.KEY=VALUE",
                   help="override, e.g. --set wander.args.checkpoint=s3://bucket/runs/x (repeatable)")
    p.set_defaults(func=cmd_deploy)

    s3 = sub.add_parser("s3", parents=[quiet], help="embedded S3 server for demos and tests")
    s3sub = s3.add_subparsers(dest="s3_command", required=True, metavar="SUBCOMMAND")
    p = s3sub.add_parser("serve", parents=[quiet], help="serve S3 on 127.0.0.1 (moto) until Ctrl-C")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--bucket", action="append", default=None, help="bucket to create (repeatable)")
    p.set_defaults(func=cmd_s3_serve)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "bucket", "") is None:
        args.bucket = ["polymodal"]
    try:
        args.func(args)
    except PolymodalError as exc:
        print(f"polymodal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polymodal: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # e.g. a Ray training failure: one line, the trace only on request
        if os.environ.get("POLYMODAL_DEBUG"):
            raise
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        print(f"polymodal: {args.command} failed: {type(exc).__name__}: {reason} "
              "(set POLYMODAL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
