"""The QVHighlights evaluator: hand-worked MR/HL cases, an independent brute-force AP on random
cases, the official numbers on the official sample submission, input errors and the CLI."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest

from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.models.llavilo.metrics import (IOU_THRESHOLDS, EvalInputError, QidMismatchError, evaluate,
                                               greedy_matches, highlight_average_precision, load_jsonl,
                                               moment_average_precision)

CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "qvhighlights"

# ---- a hand-worked moment-retrieval pair ---------------------------------------------------------
# qid 1: GT g0 = [0, 10], g1 = [20, 30]. By score: [0, 10] IoU(g0) = 1 -> TP; [0, 8] IoU(g0) = 0.8 but
#   g0 is taken -> FP; [20, 29] IoU(g1) = 0.9 -> TP for t <= 0.9, FP at 0.95.
#   t <= 0.9: TP FP TP, precision 1, 1/2, 2/3, envelope at the TPs 1 and 2/3 -> AP = (1 + 2/3) / 2 = 5/6
#   t = 0.95: TP FP FP -> AP = 1/2
# qid 2: GT [40, 60]. By score: [0, 10] -> FP; [40, 58] IoU 0.9 -> TP for t <= 0.9; [40, 60] IoU 1 ->
#   FP for t <= 0.9 (GT taken), TP at 0.95.
#   t <= 0.9: FP TP FP, precision 0, 1/2, 1/3 -> AP = max(1/2, 1/3) / 1 = 1/2
#   t = 0.95: FP FP TP -> AP = 1/3
# mAP: t <= 0.9: (5/6 + 1/2) / 2 = 2/3; t = 0.95: (1/2 + 1/3) / 2 = 5/12; average (9 * 2/3 + 5/12) / 10 = 77/120
# R1 uses the first listed window: qid 1 [0, 10] vs g0 -> IoU 1, hit; qid 2 [0, 10] vs [40, 60] -> miss: 50 %
# Buckets: qid 1's windows are 10 s long -> short (0, 10]; qid 2's is 20 s -> middle; no long query.
#   short = qid 1 only: (9 * 5/6 + 1/2) / 10 = 0.8; middle = qid 2 only: (9 * 1/2 + 1/3) / 10 = 29/60
MR_GT = [{"qid": 1, "duration": 150, "relevant_windows": [[0, 10], [20, 30]]},
         {"qid": 2, "duration": 150, "relevant_windows": [[40, 60]]}]
MR_SUB = [{"qid": 1, "pred_relevant_windows": [[0, 10, 0.9], [0, 8, 0.8], [20, 29, 0.7]]},
          {"qid": 2, "pred_relevant_windows": [[0, 10, 0.95], [40, 58, 0.5], [40, 60, 0.4]]}]


def test_per_query_ap_hand_worked():
    ap1 = moment_average_precision(np.array(MR_SUB[0]["pred_relevant_windows"], float),
                                   np.array(MR_GT[0]["relevant_windows"], float))
    ap2 = moment_average_precision(np.array(MR_SUB[1]["pred_relevant_windows"], float),
                                   np.array(MR_GT[1]["relevant_windows"], float))
    assert np.allclose(ap1, [5 / 6] * 9 + [1 / 2])
    assert np.allclose(ap2, [1 / 2] * 9 + [1 / 3])


def test_mr_metrics_hand_worked():
    out = evaluate(MR_SUB, MR_GT)
    brief = out["brief"]
    assert list(brief) == ["MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mAP@0.5",
                           "MR-full-mAP@0.75", "MR-long-mAP", "MR-middle-mAP", "MR-short-mAP"]  # official order
    assert brief["MR-full-mAP"] == round(100 * 77 / 120, 2) == 64.17
    assert brief["MR-full-mAP@0.5"] == brief["MR-full-mAP@0.75"] == 66.67
    assert out["full"]["MR-mAP"]["0.95"] == round(100 * 5 / 12, 2)
    assert brief["MR-full-R1@0.5"] == brief["MR-full-R1@0.7"] == 50.0
    assert brief["MR-short-mAP"] == 80.0 and out["short"]["num_queries"] == 1
    assert brief["MR-middle-mAP"] == round(100 * 29 / 60, 2) and out["middle"]["MR-R1"]["0.5"] == 0.0
    assert brief["MR-long-mAP"] is None and out["long"]["num_queries"] == 0
    assert list(out) == ["brief", "full", "long", "middle", "short"]
    assert not any(k.startswith("HL") for k in brief)  # no saliency in either file


def test_greedy_takes_highest_iou_unmatched_gt():
    # GT [0, 10], [8, 20]. [6, 16] (score 0.9): IoU 4/16 = 0.25 with the first, 8/14 = 0.57 with the
    # second -> takes the second at t = 0.5. [8, 20] (0.8) is the perfect match of the second but comes
    # later -> FP. AP@0.5 = (1/1) / 2 GT = 0.5.
    pred = np.array([[8, 20, 0.8], [6, 16, 0.9]], float)  # listed out of score order on purpose
    gt = np.array([[0, 10], [8, 20]], float)
    tp = greedy_matches(pred, gt, [0.5, 0.9])
    assert tp.tolist() == [[True, False], [False, True]]  # at 0.9 only [8, 20] matches
    assert moment_average_precision(pred, gt, [0.5])[0] == pytest.approx(0.5)


def test_r1_picks_best_gt_and_uses_the_first_listed_window():
    gt = [{"qid": 7, "relevant_windows": [[0, 10], [20, 30]]}]
    # top-1 [20, 28] pairs with [20, 30] (IoU 0.8), not with the first GT window
    out = evaluate([{"qid": 7, "pred_relevant_windows": [[20, 28, 0.5]]}], gt)
    r1 = out["full"]["MR-R1"]
    assert r1["0.8"] == 100.0 and r1["0.85"] == 0.0
    # As in the official code R1 takes the first listed window, even if a later one scores higher;
    # the mAP sorts by score.
    out = evaluate([{"qid": 7, "pred_relevant_windows": [[50, 60, 0.1], [20, 30, 0.9]]}], gt)
    assert out["brief"]["MR-full-R1@0.5"] == 0.0
    assert out["full"]["MR-mAP"]["0.95"] == 50.0  # TP at rank 1 of 2 GT windows


# ---- an independent brute-force AP -------------------------------------------------------------------

def _iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union else 0.0


def _reference_ap(pred, gt, threshold):
    """Greedy matching as a plain loop, then the area under the interpolated PR curve, level by level."""
    ranked = sorted(pred, key=lambda w: -w[2])  # Python's sort is stable, like the official one
    used, flags = set(), []
    for w in ranked:
        candidates = sorted(((_iou(w, g), j) for j, g in enumerate(gt) if j not in used), reverse=True)
        if candidates and candidates[0][0] >= threshold:
            used.add(candidates[0][1])
            flags.append(True)
        else:
            flags.append(False)
    curve, tp = [], 0
    for rank, flag in enumerate(flags, start=1):
        tp += flag
        curve.append((tp / len(gt), tp / rank))  # (recall, precision)
    area, previous = 0.0, 0.0
    for level in sorted({r for r, _ in curve if r > 0}):
        area += (level - previous) * max(p for r, p in curve if r >= level)
        previous = level
    return area


def test_ap_equals_brute_force_on_random_cases():
    rng = random.Random(0)
    for _ in range(150):
        gt = []
        for _ in range(rng.randint(1, 4)):
            st = rng.randint(0, 28)
            gt.append([st, st + rng.randint(1, 8)])
        pred = []
        for _ in range(rng.randint(1, 12)):
            st = rng.randint(0, 30)
            pred.append([st, st + rng.randint(0, 10), rng.choice([0.2, 0.5, 0.9, rng.random()])])  # ties in score
        got = moment_average_precision(np.array(pred, float), np.array(gt, float))
        want = [_reference_ap(pred, gt, t) for t in IOU_THRESHOLDS]
        assert np.allclose(got, want, atol=1e-12), (pred, gt)


# ---- highlight detection ------------------------------------------------------------------------------

def test_highlight_ap_hand_worked():
    # positives at clips 2 and 3; clips 2 and 4 tie at 0.5. PR points per distinct score:
    # 0.9 -> (P 0, R 0); 0.5 -> (1/3, 1/2); 0.3 -> (1/2, 1); 0.1 -> (2/5, 1). Recall rises at 0.5 and 0.3;
    # interpolated precision there max(1/3, 1/2, 2/5) = 1/2 and 1/2 -> mean 0.5.
    assert highlight_average_precision([0, 0, 1, 1, 0], [0.1, 0.9, 0.5, 0.3, 0.5]) == pytest.approx(0.5)
    assert highlight_average_precision([0, 1, 0], [0.1, 0.9, 0.5]) == 1.0
    assert highlight_average_precision([0, 0, 0], [0.1, 0.9, 0.5]) == 0.0  # official convention
    assert highlight_average_precision([1, 1], [0.1, 0.9]) == 1.0


def _reference_hl_ap(labels, scores):
    """Precision/recall at every distinct score threshold; mean over recall levels of the best
    precision at that recall or higher."""
    n_pos = sum(labels)
    if n_pos in (0, len(labels)):
        return float(n_pos > 0)
    curve = []
    for threshold in set(scores):
        chosen = [y for y, s in zip(labels, scores) if s >= threshold]
        curve.append((sum(chosen) / n_pos, sum(chosen) / len(chosen)))
    levels = sorted({r for r, _ in curve if r > 0})
    return sum(max(p for r, p in curve if r >= level) for level in levels) / len(levels)


def test_highlight_ap_equals_brute_force_on_random_cases():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(2, 15)
        labels = [rng.random() < 0.4 for _ in range(n)]
        scores = [rng.choice([0.0, 0.5, 1.0, round(rng.random(), 1)]) for _ in range(n)]  # many ties
        assert highlight_average_precision(labels, scores) == pytest.approx(_reference_hl_ap(labels, scores))


# qid 1: 10 s -> 5 clips; annotator scores on clips 1-3, 0 elsewhere:
#   clip 1 [4, 2, 0], clip 2 [3, 4, 1], clip 3 [1, 4, 0]; predicted [0.1, 0.9, 0.5, 0.3, 0.5]
#   VeryGood (>= 4): annotator 0 {1} -> AP 1; annotator 1 {2, 3} -> 0.5 (see above); annotator 2 {} -> 0
#   Good (>= 3): annotator 0 {1, 2}: points (1, 1/2), (2/3, 1) -> (1 + 2/3) / 2 = 5/6; 1 -> 0.5; 2 -> 0
#   Hit@1: clip 1 is positive for annotator 0 at both levels -> hit
# qid 2: 6 s -> 3 clips; clip 0 = [4, 4, 4]; predicted [0.1, 0.2, 0.3, 0.9] (one clip too many):
#   AP uses [0.1, 0.2, 0.3] -> the positive clip ranks 3rd -> 1/3 for each annotator;
#   Hit@1: the argmax, clip 3, lies outside the video -> miss
HL_GT = [{"qid": 1, "duration": 10, "relevant_windows": [[2, 8]], "relevant_clip_ids": [1, 2, 3],
          "saliency_scores": [[4, 2, 0], [3, 4, 1], [1, 4, 0]]},
         {"qid": 2, "duration": 6, "relevant_windows": [[0, 2]], "relevant_clip_ids": [0],
          "saliency_scores": [[4, 4, 4]]}]
HL_SUB = [{"qid": 1, "pred_relevant_windows": [[2, 8, 0.9]], "pred_saliency_scores": [0.1, 0.9, 0.5, 0.3, 0.5]},
          {"qid": 2, "pred_relevant_windows": [[0, 2, 0.9]], "pred_saliency_scores": [0.1, 0.2, 0.3, 0.9]}]


def test_highlight_metrics_hand_worked():
    out = evaluate(HL_SUB, HL_GT)
    assert out["HL-min-VeryGood"] == {"HL-mAP": round(100 * (1 + 0.5 + 0 + 3 / 3) / 6, 2), "HL-Hit1": 50.0}
    assert out["HL-min-Good"] == {"HL-mAP": round(100 * (5 / 6 + 0.5 + 0 + 3 / 3) / 6, 2), "HL-Hit1": 50.0}
    brief = out["brief"]
    assert list(brief)[-6:] == ["HL-min-Fair-mAP", "HL-min-Fair-Hit1", "HL-min-Good-mAP", "HL-min-Good-Hit1",
                                "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"]
    assert brief["HL-min-VeryGood-mAP"] == 41.67 and brief["HL-min-VeryGood-Hit1"] == 50.0
    assert brief["MR-full-R1@0.7"] == 100.0


def test_highlights_skipped_without_gt_saliency_and_in_charades_protocol():
    no_saliency_gt = [{k: v for k, v in row.items() if k not in ("saliency_scores", "relevant_clip_ids")}
                      for row in HL_GT]
    assert not any(k.startswith("HL") for k in evaluate(HL_SUB, no_saliency_gt)["brief"])
    out = evaluate(HL_SUB, HL_GT, protocol="charades")
    assert list(out) == ["brief", "full"]
    assert list(out["brief"]) == ["MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mAP@0.5",
                                  "MR-full-mAP@0.75"]


def test_charades_protocol_filters_to_0_1500():
    # lighthouse's single (0, 1500] range is a real filter: a query whose only GT window has zero length
    # drops out, while the QVHighlights "full" bucket keeps it
    gt = [{"qid": 1, "relevant_windows": [[3.5, 3.5]]}, {"qid": 2, "relevant_windows": [[1200.0, 1400.0]]}]
    sub = [{"qid": 1, "pred_relevant_windows": [[0.0, 5.0, 0.9]]},
           {"qid": 2, "pred_relevant_windows": [[1210.0, 1400.0, 0.8]]}]
    assert evaluate(sub, gt, protocol="charades")["full"]["num_queries"] == 1
    assert evaluate(sub, gt, protocol="charades")["brief"]["MR-full-R1@0.7"] == 100.0
    assert evaluate(sub, gt)["full"]["num_queries"] == 2


# ---- conformance with the official evaluator ----------------------------------------------------------

# The official metrics of moment_detr's sample submission on the val ground truth.
OFFICIAL_SAMPLE_BRIEF = {
    # jayleicn/moment_detr standalone_eval/sample_val_preds_metrics_raw.json (the expected output the
    # repo ships), as transcribed in /work/shared/reference/mission-anchors.md section A1.2:
    "MR-full-R1@0.5": 53.94, "MR-full-R1@0.7": 34.84, "MR-full-mAP": 32.2, "MR-full-mAP@0.5": 54.96,
    "MR-full-mAP@0.75": 31.01, "HL-min-VeryGood-mAP": 35.65, "HL-min-VeryGood-Hit1": 55.55,
    # Not in that transcription (the index does not serve the JSON itself): the output of the official
    # algorithm (jayleicn/moment_detr standalone_eval/eval.py + utils.py, run single-process on the same
    # pair outside this repo), which also reproduced all seven values above.
    "MR-short-mAP": 3.28, "MR-middle-mAP": 32.3, "MR-long-mAP": 41.11,
    "HL-min-Fair-mAP": 67.77, "HL-min-Fair-Hit1": 66.45, "HL-min-Good-mAP": 58.09, "HL-min-Good-Hit1": 64.45,
}


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason=f"no conformance data at {CONFORMANCE}")
def test_official_sample_submission_reproduces_official_metrics():
    out = evaluate(load_jsonl(str(CONFORMANCE / "sample_val_preds.jsonl")),
                   load_jsonl(str(CONFORMANCE / "highlight_val_release.jsonl")))
    assert out["brief"] == OFFICIAL_SAMPLE_BRIEF
    assert out["full"]["num_queries"] == 1550
    assert [out[b]["num_queries"] for b in ("short", "middle", "long")] == [429, 957, 574]


# ---- input errors ----------------------------------------------------------------------------------------

def test_load_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text('{"qid": 1}\n\n{"qid": 2,, }\n')
    with pytest.raises(EvalInputError, match=r"preds\.jsonl line 3: invalid JSON"):
        load_jsonl(str(path))
    path.write_text('{"qid": 1}\n[1, 2]\n')
    with pytest.raises(EvalInputError, match=r"preds\.jsonl line 2: expected a JSON object"):
        load_jsonl(str(path))
    path.write_text('{"qid": 1, "query": "a\u2028b"}\r\n', encoding="utf-8")  # raw U+2028 is legal JSON
    assert load_jsonl(str(path)) == [{"qid": 1, "query": "a\u2028b"}]


def test_qid_mismatch_names_missing_and_extra():
    gt = [{"qid": q, "relevant_windows": [[0, 2]]} for q in range(10)]
    sub = [{"qid": q, "pred_relevant_windows": [[0, 2, 1.0]]} for q in [0, 1, 2, 99]]
    with pytest.raises(QidMismatchError) as info:
        evaluate(sub, gt)
    err = info.value
    assert isinstance(err, PolymodalError)
    assert err.missing == list(range(3, 10)) and err.extra == [99]
    msg = str(err)
    assert "7 ground-truth qid(s) missing" in msg and "3, 4, 5, 6, 7, ... (2 more)" in msg and "99" in msg
    # the official match_number=False: score the shared qids only
    assert evaluate(sub, gt, match_qids=False)["full"]["num_queries"] == 3


@pytest.mark.parametrize("windows, needle", [
    ([[5, 2, 0.9]], "ends before it starts"),
    ([[0, 2]], "is not [start, end, score]"),
    ([], "non-empty list"),
    ([[0, "a", 0.1]], "is not [start, end, score]"),
])
def test_malformed_windows_name_the_qid(windows, needle):
    gt = [{"qid": 41, "relevant_windows": [[0, 2]]}, {"qid": 42, "relevant_windows": [[0, 2]]}]
    sub = [{"qid": 41, "pred_relevant_windows": [[0, 2, 1.0]]}, {"qid": 42, "pred_relevant_windows": windows}]
    with pytest.raises(EvalInputError) as info:
        evaluate(sub, gt)
    assert "qid 42" in str(info.value) and needle in str(info.value) and "qid 41" not in str(info.value)


def test_other_input_errors():
    sub, gt = copy.deepcopy(HL_SUB), copy.deepcopy(HL_GT)
    del sub[1]["pred_saliency_scores"]
    with pytest.raises(EvalInputError, match=r"no 'pred_saliency_scores' \(qids 2\)"):
        evaluate(sub, gt)
    gt[0]["relevant_clip_ids"] = [1, 2, 7]  # the video has 5 clips
    with pytest.raises(EvalInputError, match=r"qid 1: relevant_clip_ids \[7\] outside \[0, 5\)"):
        evaluate(HL_SUB, gt)
    with pytest.raises(EvalInputError, match="qid 1 appears 2 times"):
        evaluate(MR_SUB + MR_SUB[:1], MR_GT)
    with pytest.raises(EvalInputError, match="nothing to evaluate"):
        evaluate([{"qid": 1}, {"qid": 2}], MR_GT)
    with pytest.raises(ValueError, match="unknown protocol 'tacos'; known: qvhighlights, charades"):
        evaluate(MR_SUB, MR_GT, protocol="tacos")


# ---- command line -----------------------------------------------------------------------------------------

def _write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_prints_and_writes_metrics(tmp_path, capsys):
    pred, gt = _write_jsonl(tmp_path / "pred.jsonl", HL_SUB), _write_jsonl(tmp_path / "gt.jsonl", HL_GT)
    out_path = tmp_path / "metrics" / "m.json"
    assert main(["eval", "qvhighlights", "--submission", pred, "--gt", gt, "--out", str(out_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert next(iter(printed)) == "brief"
    assert printed == json.loads(out_path.read_text()) == evaluate(HL_SUB, HL_GT)
    assert printed["brief"]["HL-min-VeryGood-mAP"] == 41.67


def test_cli_qid_mismatch_exits_2_with_the_missing_qids(tmp_path, capsys):
    pred = _write_jsonl(tmp_path / "pred.jsonl", MR_SUB[:1])
    gt = _write_jsonl(tmp_path / "gt.jsonl", MR_GT)
    assert main(["eval", "qvhighlights", "--submission", pred, "--gt", gt]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("polymodal: error:") and "\n" not in err
    assert "1 ground-truth qid(s) missing from the submission: 2" in err and "pred.jsonl" in err


def test_cli_missing_file_exits_2(tmp_path, capsys):
    gt = _write_jsonl(tmp_path / "gt.jsonl", MR_GT)
    assert main(["eval", "qvhighlights", "--submission", str(tmp_path / "nope.jsonl"), "--gt", gt]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_cli_help_says_what_it_computes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "qvhighlights", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "moment retrieval" in text.lower() and "hit@1" in text.lower() and "--submission" in text


def test_cli_reads_and_writes_s3(s3_bucket_uri, capsys):
    from polymodal import storage

    storage.write_text(f"{s3_bucket_uri}/pred.jsonl", "".join(json.dumps(r) + "\n" for r in MR_SUB))
    storage.write_text(f"{s3_bucket_uri}/gt.jsonl", "".join(json.dumps(r) + "\n" for r in MR_GT))
    assert main(["eval", "qvhighlights", "--submission", f"{s3_bucket_uri}/pred.jsonl",
                 "--gt", f"{s3_bucket_uri}/gt.jsonl", "--out", f"{s3_bucket_uri}/metrics.json"]) == 0
    written = json.loads(storage.read_text(f"{s3_bucket_uri}/metrics.json"))
    assert written == json.loads(capsys.readouterr().out)
    assert written["brief"]["MR-full-mAP"] == 64.17
