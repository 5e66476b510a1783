"""``polymodal``: the command line. Every command that reads a config takes ``--config``
(a path or ``s3://`` URI) and repeated ``--set dotted.key=value`` overrides."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from polymodal.cliargs import add_config, load, print_uris, storage_options
from polymodal.errors import PolymodalError
from polymodal.logs import ENV, LEVELS, level_from, where_logs_go
from polymodal.logs import configure as configure_logging
from polymodal.registry import registry


def cmd_data_synth(args) -> None:
    from polymodal.registry import get_task, task_names

    storage_opts = None
    task_name = args.task
    if args.config:
        cfg = load(args)
        storage_opts, task_name = cfg.storage, task_name or cfg.task
    if not task_name:
        raise PolymodalError(f"give --task (one of {', '.join(task_names())}) or --config")
    try:
        task = get_task(task_name)
    except KeyError:
        raise PolymodalError(f"unknown task {task_name!r}; known: {', '.join(task_names())}") from None
    out = task.synth(args.out, seed=args.seed, scale=args.scale, storage=storage_opts, progress=not args.quiet)
    print_uris(out)
    print(f"train on it: polymodal train --config CONFIG.yaml (task: {task_name}) "
          + " ".join(f"--set {o}" for o in task.synth_overrides(out)))


def cmd_plugin(args) -> None:
    """A command a system registered (``data import --format X``, ``data X``, ``eval X``)."""
    args.command_entry.run(args)


def cmd_data_inspect(args) -> None:
    from polymodal import shards

    storage_opts = storage_options(args)
    shards.open_dataset(args.uri, storage_opts, verify=args.verify)
    print(shards.describe(args.uri, storage_opts))
    print(f"verified: {args.verify}")


def cmd_train(args) -> None:
    from polymodal.train.loop import fit, fit_local

    cfg = load(args)
    summary = (fit_local if args.local else fit)(cfg, progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=str))
    print(f"run folder:  {cfg.run_uri}")
    print(f"checkpoint:  {summary.get('best_checkpoint')}")
    print(f"metrics csv: {cfg.run_uri}/logs/metrics.csv   tensorboard: {cfg.run_uri}/logs/tensorboard")


def cmd_tune(args) -> None:
    import yaml

    from polymodal.tune import load_space, run_sweep

    cfg = load(args)
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

    out, uri = evaluate_run(load(args), split=args.split, which=args.which, progress=not args.quiet)
    print(json.dumps(out, indent=2))
    print(f"written: {uri}")


def cmd_report(args) -> None:
    from polymodal.report import write_report

    uri = write_report(load(args), compare=args.compare or None)
    print(f"report: {uri}")


def cmd_params(args) -> None:
    from polymodal.config import apply_overrides, validate_config
    from polymodal.registry import get_task

    base = load(args)
    variants = [[]]
    if args.vary:
        key, _, values = args.vary.partition("=")
        variants = [[f"{key}={v}"] for v in values.split(",") if v]
    print(f"{'variant':<28} {'trainable':>12} {'total':>12} {'trainable %':>12}")
    for extra in variants:
        cfg = validate_config(apply_overrides(base.to_dict(), extra)) if extra else base
        task = get_task(cfg.task)
        model = task.build_model(cfg.model)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        name = extra[0] if extra else "(config)"
        line = f"{name:<28} {n_train:>12,} {n_all:>12,} {100 * n_train / max(n_all, 1):>11.3f}%"
        # the paper's own count(s) for this configuration, where the task knows them
        for row, ref in (task.reference_params(cfg.model) or {}).items():
            line += f"   paper {ref:,} ({row}): ours/paper {n_train / ref:.3f}"
        print(line)


def cmd_models_stage(args) -> None:
    from polymodal.staging import stage

    record = stage(args.source, args.out, storage_options(args), revision=args.revision, allow=args.include or None)
    size = sum(record["files"].values())
    print(f"staged {args.source}{' @ ' + record['revision'] if record['revision'] else ''}: "
          f"{len(record['files'])} files, {size / 2**20:.1f} MiB -> {args.out}")
    print(f"use it as: --set model.<weights field>={args.out}")


def cmd_serve_check(args) -> int:
    from polymodal.serving.config_check import check_serve_config

    errors = check_serve_config(args.config, root=args.root)
    for err in errors:
        print(f"{args.config}: {err}", file=sys.stderr)
    print(f"{args.config}: {'OK' if not errors else f'{len(errors)} error(s)'}")
    return 1 if errors else 0


def cmd_deploy(args) -> None:
    from polymodal.serving.deploy import deploy

    for url in deploy(args.config, args.overrides):
        print(f"deployed: {url}  (routes: /healthz, /v1/models, /v1/predict)")


def cmd_s3_serve(args) -> None:
    from polymodal.s3server import serve_forever

    serve_forever(args.port, tuple(args.bucket))


def _add_commands(parent, kind: str, quiet: argparse.ArgumentParser, *, dest: str | None, metavar: str | None,
                  prog: str | None) -> None:
    """One subparser per registered command. With ``dest``, ``parent`` is a parser whose choice of
    command is an option (``--format NAME``): :func:`_format_as_command` turns that option into
    the subcommand before parsing, so ``--format NAME --help`` shows only that command's options."""
    reg = registry()
    sub = parent if dest is None else parent.add_subparsers(dest=dest, required=True, metavar=metavar,
                                                            title="formats")
    for name, command in sorted(reg.items(kind).items()):
        if name in sub.choices:  # e.g. a plug-in's `data inspect`
            raise PolymodalError(f"{kind} {name!r} of {reg.owner(kind, name)} clashes with polymodal's own command "
                                 f"{name!r}; register it under another name")
        kwargs = {"prog": f"{prog} {name}"} if prog else {}
        p = sub.add_parser(name, parents=[quiet], help=command.help, description=command.description or command.help,
                           **kwargs)
        command.add_arguments(p)
        p.set_defaults(func=cmd_plugin, command_entry=command, command_parser=p)


def _format_as_command(argv: list[str]) -> list[str]:
    """``data import ... --format NAME ...`` -> ``data import NAME ...`` (argparse takes the format
    as a subcommand, so each format has its own options and ``--help``)."""
    if "data" not in argv:
        return argv
    at = argv.index("data")
    if at + 1 >= len(argv) or argv[at + 1] != "import":
        return argv
    rest = argv[at + 2:]
    for i, arg in enumerate(rest):
        if arg == "--format" and i + 1 < len(rest):
            name, rest = rest[i + 1], rest[:i] + rest[i + 2:]
            break
        if arg.startswith("--format="):
            name, rest = arg.split("=", 1)[1], rest[:i] + rest[i + 1:]
            break
    else:
        return argv
    return [*argv[:at + 2], name, *rest]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("polymodal")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _quiet_parent() -> argparse.ArgumentParser:
    # -q, -v and --log-level work before or after the subcommand (`polymodal -q train`, `jobs/train.py -q`)
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    parent.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log what polymodal does (-v: INFO, -vv: DEBUG)")
    parent.add_argument("--log-level", type=str.upper, choices=LEVELS, metavar="LEVEL", default=argparse.SUPPRESS,
                        help=f"{', '.join(LEVELS)}")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polymodal",
        description="Train, tune, evaluate and serve multimodal research systems on Ray.",
        epilog="Example: polymodal data synth --task TASK --out data/x && polymodal train --config "
               "jobs/configs/X_tiny.yaml --set optim.epochs=2. `polymodal data synth --help` lists the tasks.")
    parser.add_argument("--version", action="version", version=f"polymodal {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what polymodal does (-v: INFO, -vv: DEBUG), here and in the Ray workers")
    parser.add_argument("--log-level", type=str.upper, choices=LEVELS, metavar="LEVEL",
                        help=f"log level of polymodal's loggers: {', '.join(LEVELS)} (default WARNING, or "
                             f"${ENV})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quiet = _quiet_parent()

    data = sub.add_parser("data", parents=[quiet], help="make, import and check datasets (Parquet shards + manifest.json)")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("synth", parents=[quiet], help="write synthetic train/val/test datasets with a planted signal")
    p.add_argument("--task", choices=registry().names("task"), metavar="TASK",
                   help=f"one of {', '.join(registry().names('task'))} (default: the config's task)")
    p.add_argument("--out", required=True, help="folder or s3:// URI to write the splits into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the default row counts")
    add_config(p, required=False)
    p.set_defaults(func=cmd_data_synth)
    imp = dsub.add_parser("import", parents=[quiet], help="convert a public dataset, as its release lays it out, "
                                                          "to shards (--format NAME; NAME --help for its options)",
                          description="Convert a public dataset, as its release lays it out, to Parquet shards "
                                      "with a manifest. `polymodal data import --format NAME --help` lists the "
                                      "options of one format.")
    _add_commands(imp, "import format", quiet, dest="format", metavar="--format NAME",
                  prog="polymodal data import --format")
    p = dsub.add_parser("inspect", parents=[quiet], help="validate a dataset and print its manifest")
    p.add_argument("uri", help="dataset folder or s3:// URI")
    p.add_argument("--verify", choices=["footer", "checksum"], default="checksum",
                   help="footer: sizes and schemas; checksum: also sha256 of every shard (default)")
    add_config(p, required=False)
    p.set_defaults(func=cmd_data_inspect)
    _add_commands(dsub, "data command", quiet, dest=None, metavar=None, prog=None)  # after the built-in ones

    p = sub.add_parser("train", parents=[quiet],
                       help="train with Ray Train + DeepSpeed, or fit a closed-form task its own way (Ray tasks); "
                            "tasks; resumes an existing run")
    add_config(p)
    p.add_argument("--local", action="store_true", help="single process without Ray (CUDA if present)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("tune", parents=[quiet], help="hyperparameter sweep with Ray Tune (resumes an existing sweep)")
    add_config(p)
    p.add_argument("--space", required=True, metavar="PATH_OR_URI",
                   help="search-space YAML, e.g. one of tune_spaces/")
    p.add_argument("--no-resume", action="store_true",
                   help="fail if a sweep of the same name exists instead of continuing it")
    p.add_argument("--param", action="append", default=[], metavar="KEY=DIST",
                   help="replace or add one search parameter (YAML flow), e.g. "
                        "'model.top_n={choice: [1, 2, 3]}'; repeatable")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("evaluate", parents=[quiet], help="evaluate a run's checkpoint on a split")
    add_config(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--which", default="best", choices=["best", "latest"], help="which checkpoint")
    p.set_defaults(func=cmd_evaluate)
    ev = sub.add_parser("eval", parents=[quiet], help="score prediction files with a benchmark's official protocol")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    _add_commands(esub, "eval command", quiet, dest=None, metavar=None, prog=None)

    p = sub.add_parser("report", parents=[quiet], help="write a Markdown report with metric tables and a PNG curve")
    add_config(p)
    p.add_argument("--compare", action="append", default=[], metavar="RUN_URI",
                   help="another fitted run of the same task (folder or s3:// URI) shown beside this one, for tasks "
                        "whose report compares runs (repeatable)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("params", parents=[quiet],
                       help="trainable-parameter counts of the configured model (and variants), beside the paper's "
                            "count where the task knows it")
    add_config(p)
    p.add_argument("--vary", metavar="KEY=V1,V2,...",
                   help="one row per value, e.g. --vary model.hidden=64,128")
    p.set_defaults(func=cmd_params)

    models = sub.add_parser("models", parents=[quiet], help="pretrained weights: stage hub models into a bucket")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    p = msub.add_parser("stage", parents=[quiet], help="copy a hub model (or a local / s3:// model folder) to a "
                                                      "bucket, for clusters without internet",
                        description="Copy pretrained weights to object storage once, from a machine that reaches "
                                    "the Hugging Face hub, so a cluster without internet loads them from there: "
                                    "every pretrained-weights field takes the s3:// URI in place of the hub id. "
                                    "Hub ids go through the standard Hugging Face cache (HF_HUB_OFFLINE=1: only "
                                    "a cached copy). polymodal_stage.json, written last, records the source, "
                                    "its revision and every file's size.",
                        epilog="Example: polymodal models stage meta-llama/Llama-2-7b-hf --out "
                               "s3://bucket/models/llama-2-7b --include '*.json' --include '*.safetensors' "
                               "--include 'tokenizer.model'")
    p.add_argument("source", metavar="ID_OR_FOLDER", help="hub id (org/name), local folder or s3:// folder")
    p.add_argument("--out", required=True, help="destination folder or s3:// URI")
    p.add_argument("--revision", help="hub branch, tag or commit (default: main)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="hub files to copy, e.g. '*.safetensors' (repeatable; default: every file)")
    add_config(p, required=False)
    p.set_defaults(func=cmd_models_stage)

    serve = sub.add_parser("serve", parents=[quiet], help="check Serve configs before deploying them")
    ssub = serve.add_subparsers(dest="serve_command", required=True, metavar="SUBCOMMAND")
    p = ssub.add_parser("check", parents=[quiet], help="strict check of a Serve config (unknown keys at every level, "
                                                      "import paths, each app's args); exit 1 on errors",
                        description="Check a `serve deploy` / `serve run` config strictly: Ray Serve's schema "
                                    "accepts unknown keys (a typo deploys silently with the default), so every "
                                    "level is checked for them, each application's import_path is imported and "
                                    "its args are validated. Exit status 1 when anything is wrong.")
    p.add_argument("config", metavar="CONFIG", help="Serve config YAML, e.g. serve/config.yaml")
    p.add_argument("--root", help="folder put on sys.path to import the apps (default: the config folder's parent, "
                                  "Serve's working_dir for serve/*.yaml)")
    p.set_defaults(func=cmd_serve_check)

    p = sub.add_parser("deploy", parents=[quiet],
                       help="deploy Serve applications from a serve config YAML onto the running cluster")
    p.add_argument("--config", required=True, metavar="PATH_OR_URI", help="Serve config, e.g. serve/config.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="APP.KEY=VALUE",
                   help="override, e.g. --set APP.args.checkpoint=s3://bucket/runs/x (repeatable)")
    p.set_defaults(func=cmd_deploy)

    s3 = sub.add_parser("s3", parents=[quiet], help="embedded S3 server for demos and tests")
    s3sub = s3.add_subparsers(dest="s3_command", required=True, metavar="SUBCOMMAND")
    p = s3sub.add_parser("serve", parents=[quiet], help="serve S3 on 127.0.0.1 (moto) until Ctrl-C")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--bucket", action="append", default=None, help="bucket to create (repeatable)")
    p.set_defaults(func=cmd_s3_serve)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = _format_as_command(list(sys.argv[1:] if argv is None else argv))
    try:
        parser = build_parser()
    except PolymodalError as exc:  # a plug-in that does not fit the command line
        print(f"polymodal: error: {exc}", file=sys.stderr)
        return 2
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the (sub)command that refused them: "--format NAME: ... --flag"
            getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse printed the usage error (or the help, which exits 0)
        if exc.code in (0, None):
            raise
        return int(exc.code)
    if getattr(args, "bucket", "") is None:
        args.bucket = ["polymodal"]
    configure_logging(level_from(args.verbose, args.log_level))
    log_size = _log_size()
    try:
        status = args.func(args)
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
    finally:
        if args.command in _RUNS or _log_size() > log_size:  # where the details are
            print(f"polymodal: {where_logs_go()}", file=sys.stderr)
    return status if isinstance(status, int) else 0


#: commands that run training, evaluation or Serve on Ray: they always name the log file at the end
_RUNS = frozenset({"train", "tune", "evaluate", "deploy"})


def _log_size() -> int:
    from polymodal.logs import log_file

    path = log_file()
    return path.stat().st_size if path.exists() else 0


if __name__ == "__main__":
    sys.exit(main())
