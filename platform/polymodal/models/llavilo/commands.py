"""LLaViLo's command-line commands: ``eval qvhighlights``."""

from __future__ import annotations

import argparse
import json
import sys

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
