"""LLaViLo's command-line commands: ``eval qvhighlights`` and ``data import --format qvhighlights |
charades-sta`` (the releases as their authors lay them out, see :mod:`.importers`)."""

from __future__ import annotations

import argparse
import json
import sys

from polymodal import cliargs
from polymodal.errors import PolymodalError
from polymodal.registry import Command


def _qvh_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--submission", required=True, metavar="PRED.jsonl",
                   help="predictions, one JSON object per query: qid, pred_relevant_windows [[st, ed, score], ...] "
                        "best first, pred_saliency_scores (local path or s3:// URI)")
    p.add_argument("--gt", required=True, metavar="GT.jsonl",
                   help="ground truth, e.g. highlight_val_release.jsonl (local path or s3:// URI)")
    p.add_argument("--out", metavar="METRICS.json", help="also write the metrics JSON here (local path or s3:// URI)")


def _run_qvh(args: argparse.Namespace) -> None:
    from polymodal import storage

    from .metrics import evaluate_files

    text = json.dumps(evaluate_files(args.submission, args.gt), indent=2)
    print(text)
    if args.out:
        storage.write_text(args.out, text + "\n")
        print(f"written: {args.out}", file=sys.stderr)


QVHIGHLIGHTS = Command(
    "qvhighlights",
    "QVHighlights moment retrieval + highlight detection (official moment_detr standalone_eval protocol)",
    _qvh_args, _run_qvh,
    description="Score a QVHighlights submission the way the official evaluator "
                "(jayleicn/moment_detr standalone_eval/eval.py) does. Moment retrieval: R1@0.5-0.95 of the "
                "first listed window; mAP over IoU 0.5:0.05:0.95 of the top 10 windows, for all queries (full) "
                "and for GT windows of short (0,10], middle (10,30] and long (30,150] seconds. Highlight "
                "detection (when both files have saliency): mAP and Hit@1 per 2-s clip at Fair>=2, Good>=3, "
                "VeryGood>=4. Prints the metrics as JSON, the 'brief' summary first; numbers are percentages, "
                "as the official evaluator prints them. The qids of the two files must match.")


# --------------------------------------------------------------------------- data import


def _common_import_args(p: argparse.ArgumentParser, video: str, text: str) -> None:
    p.add_argument("--out", required=True, help="folder or s3:// URI; one dataset per split is written to OUT/<split>")
    p.add_argument("--video-features", default=video, metavar="DIR,DIR",
                   help=f"subfolders of --features holding {{vid}}.npz (key 'features'), concatenated per clip in "
                        f"this order after each is L2-normalised and all are cut to the shortest (default {video})")
    p.add_argument("--text-features", default=text, metavar="DIR",
                   help=f"subfolder of --features holding qid{{qid}}.npz query features (default {text})")
    p.add_argument("--text-key", default="last_hidden_state", choices=["last_hidden_state", "pooler_output"],
                   help="key of the query features: token features (L, D), cut to 32 tokens, or one pooled "
                        "vector (default last_hidden_state, as Moment-DETR)")
    p.add_argument("--skip-bad", action="store_true",
                   help="log, count and skip bad rows (malformed lines, missing or mis-shaped feature files) "
                        "instead of stopping at the first")
    cliargs.add_restart(p)
    cliargs.add_config(p, required=False)


def _feature_dirs(args: argparse.Namespace) -> tuple[list[str], str]:
    from polymodal import storage

    names = cliargs.names(args.video_features)
    if not names:
        raise PolymodalError("--video-features is empty; name at least one subfolder of --features")
    return [storage.join(args.features, n) for n in names], storage.join(args.features, args.text_features)


def _print_report(report: dict, args: argparse.Namespace) -> None:
    from polymodal.shards import open_dataset

    opts = cliargs.storage_options(args)
    for split, info in report["splits"].items():
        manifest = open_dataset(info["uri"], opts)
        labels = "labelled" if manifest.meta.get("labelled", True) else (
            f"no labels: `polymodal evaluate --split {split}` writes predictions for the benchmark, no metrics")
        print(f"{split}: {info['uri']} ({info['rows']} rows, {info['skipped']} skipped; {labels})")
    if report.get("clamped"):
        print(f"clamped: {report['clamped']} window end(s) past the video cut to its duration")
    if report.get("dropped"):
        print(f"dropped: {len(report['dropped'])} line(s) with start >= end after the cut, e.g. {report['dropped'][0]}")
    if report["skipped"]:
        print(f"skipped: {len(report['skipped'])} bad row(s), e.g. {report['skipped'][0]}")
    first = open_dataset(next(iter(report["splits"].values()))["uri"], opts)
    dims = f"model.video_dim={first.columns['video'].shape[-1]} model.text_dim={first.columns['text'].shape[-1]}"
    sets = " ".join(f"--set data.{s}={i['uri']}" for s, i in report["splits"].items() if s in ("train", "val", "test"))
    print(f"train on it: polymodal train --config CONFIG.yaml {sets} --set {dims.replace(' ', ' --set ')}")


def _qvh_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="DIR",
                   help="folder with highlight_{train,val,test}_release.jsonl (jayleicn/moment_detr data/; local or "
                        "s3://); the test release has no labels and is imported as an unlabelled split")
    p.add_argument("--features", required=True, metavar="DIR",
                   help="the unpacked features/ folder of moment_detr_features.tar.gz: slowfast_features/{vid}.npz, "
                        "clip_features/{vid}.npz, clip_text_features/qid{qid}.npz")
    p.add_argument("--splits", default="train,val,test", metavar="A,B",
                   help="splits to import, each from highlight_<split>_release.jsonl (default train,val,test)")
    p.add_argument("--max-clips", type=int, default=75,
                   help="clips kept per video (default 75: 2-s clips of the 150-s videos, Moment-DETR max_v_l)")
    _common_import_args(p, "slowfast_features,clip_features", "clip_text_features")


def _run_qvh_import(args: argparse.Namespace) -> None:
    from polymodal import storage

    from .importers import import_qvhighlights

    opts = cliargs.storage_options(args)
    splits = cliargs.names(args.splits)
    if not splits:
        raise PolymodalError("--splits is empty; e.g. --splits train,val,test")
    jsonl = {s: storage.join(args.source, f"highlight_{s}_release.jsonl") for s in splits}
    missing = [uri for uri in jsonl.values() if not storage.exists(uri, opts)]
    if missing:
        raise PolymodalError(f"--source {args.source}: {', '.join(missing)} not found; point --source at the folder "
                             "of the highlight_<split>_release.jsonl files or name the splits you have with --splits")
    video_dirs, text_dir = _feature_dirs(args)
    report = import_qvhighlights(jsonl, video_dirs, text_dir, args.out, max_clips=args.max_clips,
                                 text_key=args.text_key, skip_bad=args.skip_bad, opts=opts,
                                 progress=not getattr(args, "quiet", False), resume=not args.restart)
    _print_report(report, args)


def _sta_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, metavar="DIR",
                   help="folder with charades_sta_{train,test}.txt (lines 'VID start end##sentence', jiyanggao/TALL) "
                        "and Charades_v1_{train,test}.csv (video durations, column 'length'); local or s3://")
    p.add_argument("--features", required=True, metavar="DIR",
                   help="lighthouse's features/charades folder (1-s clips): clip/{vid}.npz, slowfast/{vid}.npz, "
                        "clip_text/qid{qid}.npz with the qids of its charades_{train,test}_release.jsonl")
    p.add_argument("--max-clips", type=int, default=None,
                   help="clips kept per video (default: enough 1-s clips for the longest annotated video, so no "
                        "moment is cut; lighthouse cuts at 75)")
    _common_import_args(p, "clip,slowfast", "clip_text")


def _run_sta_import(args: argparse.Namespace) -> None:
    from polymodal import storage

    from .importers import import_charades_sta

    opts = cliargs.storage_options(args)
    txt = {s: storage.join(args.source, f"charades_sta_{s}.txt") for s in ("train", "test")}
    csvs = [storage.join(args.source, f"Charades_v1_{s}.csv") for s in ("train", "test")]
    missing = [uri for uri in [*txt.values(), *csvs] if not storage.exists(uri, opts)]
    if missing:
        raise PolymodalError(f"--source {args.source}: {', '.join(missing)} not found; point --source at the folder "
                             "holding charades_sta_{train,test}.txt and Charades_v1_{train,test}.csv (2D-TAN keeps "
                             "them together in data/Charades-STA/)")
    video_dirs, text_dir = _feature_dirs(args)
    # qids 0, 1, ... over train then test, as lighthouse numbers its jsonl (and names the text features)
    report = import_charades_sta(txt, csvs, video_dirs, args.out, text_feature_dir=text_dir, max_clips=args.max_clips,
                                 text_key=args.text_key, skip_bad=args.skip_bad, opts=opts,
                                 progress=not getattr(args, "quiet", False), resume=not args.restart)
    _print_report(report, args)


QVHIGHLIGHTS_IMPORT = Command(
    "qvhighlights", "QVHighlights (moment_detr release jsonl + SlowFast/CLIP features) -> LLaViLo moment retrieval",
    _qvh_import_args, _run_qvh_import,
    description="Import QVHighlights as jayleicn/moment_detr releases it: data/highlight_{train,val,test}_release.jsonl "
                "(qid, query, duration, vid, relevant_windows, relevant_clip_ids, saliency_scores; the test release "
                "has no labels) and the features/ folder of moment_detr_features.tar.gz. Video features are read as "
                "Moment-DETR's loader does: key 'features', cut to 75 clips of 2 s, float32, each type L2-normalised, "
                "the types cut to the shortest and concatenated, plus 2 temporal endpoint columns "
                "(2304 + 512 + 2 = 2818); query features: key last_hidden_state cut to 32 tokens (512). Every line "
                "and every feature file is checked before anything is written; a bad one stops the import naming "
                "the file, line and field (or the vid and path). Writes OUT/<split> per split; a rerun continues an "
                "interrupted import after its last finished shard (--restart starts over).")

CHARADES_STA_IMPORT = Command(
    "charades-sta", "Charades-STA (TALL txt + Charades csv durations + lighthouse features) -> LLaViLo moment retrieval",
    _sta_import_args, _run_sta_import,
    description="Import Charades-STA: charades_sta_{train,test}.txt ('VID start end##sentence', jiyanggao/TALL) with "
                "durations from Charades_v1_{train,test}.csv (column 'length'). As 2D-TAN does, an end past the video "
                "is cut to its duration and a line whose start is then not before its end is dropped (both counted "
                "and printed). Queries get qids 0, 1, ... over train then test, the numbering of lighthouse's "
                "charades_{train,test}_release.jsonl, whose features/charades folder (1-s clips; clip/, slowfast/ "
                "{vid}.npz with key 'features', clip_text/qid{qid}.npz) --features names. A line without '##' or "
                "with a bad number stops the import naming the file and line. Writes OUT/train and OUT/test; a rerun "
                "continues an interrupted import after its last finished shard (--restart starts over).")


def import_formats() -> list[Command]:
    """LLaViLo's ``data import`` formats."""
    return [QVHIGHLIGHTS_IMPORT, CHARADES_STA_IMPORT]
