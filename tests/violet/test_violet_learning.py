"""Tiny VIOLET learns to read the direction of motion (`slow`: three Ray Train runs, ~5 minutes).

Synthetic moving shapes (:mod:`polymodal.models.violet.synth`): the question "which way does the
<colour> <shape> move?" has four answers, so chance is 25 %. The axis of motion (left/right versus
up/down) can be read from the set of frames, the sign only from their order; a model that averages
its frames over time can therefore reach 50 % at best, however well it is trained.

Shipped configs, data and checkpoints in the S3 server, Ray Train with one CPU worker, DeepSpeed
ZeRO-2: pre-train (VTM + MLM + MVM, BM+AM masks), fine-tune open-ended QA from that export, and
fine-tune the mean-pooling ablation (``video_encoder: mean``) from the same export.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from polymodal import storage
from polymodal.config import load_config
from polymodal.registry import get_task

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def violet_data(s3_server) -> dict[str, dict[str, str]]:
    """1024 / 256 / 256 clips with captions for pre-training and, from another seed (other videos),
    for QA."""
    import polymodal.models.violet.task  # noqa: F401  (registers the violet.* tasks)

    return {"pretrain": get_task("violet.pretrain").synth("s3://polymodal/session/violet/pretrain", seed=0,
                                                          progress=False),
            "oeqa": get_task("violet.oeqa").synth("s3://polymodal/session/violet/oeqa", seed=1, progress=False)}


def violet_config(yaml: str, data: dict[str, str], storage_path: str, name: str, *overrides: str):
    return load_config(str(ROOT / "jobs" / "configs" / yaml), [
        f"name={name}", f"storage_path={storage_path}", f"model.bert={data['bert']}", f"data.train={data['train']}",
        f"data.val={data['val']}", f"data.test={data['test']}", *overrides])


def val_log(cfg) -> list[dict[str, float]]:
    text = storage.read_text(storage.join(cfg.run_uri, "logs", "metrics.csv"), cfg.storage)
    return [{k[4:]: float(v) for k, v in row.items() if k.startswith("val_") and v}
            for row in csv.DictReader(io.StringIO(text))]


def test_pretrained_then_finetuned_violet_answers_direction_and_mean_pooling_cannot(ray_cluster, violet_data,
                                                                                     s3_bucket_uri):
    from polymodal.evaluate import evaluate_run
    from polymodal.train.loop import fit

    runs = f"{s3_bucket_uri}/runs"
    # 3 pre-training epochs, 20 of fine-tuning: with the random VQ-GAN's MVM targets, pre-training is a
    # worse start than scratch (in process: 70 % vs 87 %), so the fine-tuning needs the epochs. With
    # 4 + 12 the deterministic tiny tokenizer gave swin 0.61 vs mean 0.50 (gap 0.11 < 0.15); with
    # 3 + 20, swin 0.89 vs mean 0.54 on test.
    pre = violet_config("violet_tiny_pretrain.yaml", violet_data["pretrain"], runs, "pretrain", "optim.epochs=3")
    pre_summary = fit(pre, progress=False)
    pre_log = val_log(pre)
    print("pre-training val per epoch:", pre_log)
    assert len(pre_log) == pre.optim.epochs
    # VTM (chance 50 %) and MLM (a random head: ~1 / vocabulary, under 1 %) learn. MVM's targets are the codes of the synthetic set's random tiny
    # VQ-GAN, mostly a hash of background noise: it is trained and logged, not asserted.
    assert pre_log[-1]["vtm_acc"] > 0.58
    assert pre_log[-1]["mlm_acc"] > 0.50

    init = f"model.init={pre_summary['best_checkpoint']}"
    scores = {}
    for encoder in ("swin", "mean"):
        cfg = violet_config("violet_tiny_qa.yaml", violet_data["oeqa"], runs, f"qa-{encoder}", init,
                            f"model.video_encoder={encoder}", "optim.epochs=20")
        fit(cfg, progress=False)
        out, _ = evaluate_run(cfg, split="test", progress=False)
        scores[encoder] = {"val": val_log(cfg)[-1]["acc"], "test": out["metrics"]["acc"]}
    print("direction QA accuracy (fraction), chance 0.25, order-blind ceiling 0.50:", scores)
    assert scores["swin"]["test"] >= 0.60 and scores["swin"]["val"] >= 0.60
    assert scores["mean"]["test"] <= 0.58  # 256 test rows: 50 % plus two standard errors, and some
    assert scores["swin"]["test"] >= scores["mean"]["test"] + 0.15


def test_violet_sweep_ranks_trials_by_val_vtm_accuracy(ray_cluster, violet_data, s3_bucket_uri):
    """tune_spaces/violet.yaml: 2 trials x 2 short epochs of pre-training through Ray Tune + Train,
    ASHA on val VTM accuracy; the best config is a valid experiment."""
    from polymodal.tune import load_space, run_sweep

    cfg = violet_config("violet_tiny_pretrain.yaml", violet_data["pretrain"], f"{s3_bucket_uri}/runs", "sweep",
                        "optim.epochs=2", "optim.max_steps_per_epoch=4")
    space = load_space(str(ROOT / "tune_spaces" / "violet.yaml"), cfg)
    space = space.model_copy(update={"name": "violet-test", "num_samples": 2, "max_concurrent_trials": 1})
    out = run_sweep(cfg, space, progress=False)
    assert out.complete and out.metric == "val_vtm_acc" and len(out.trials) == 2, out.trials
    best = load_config(out.best_config)
    assert best.task == "violet.pretrain" and best.model.swin_depth == out.best_values["model.swin_depth"]
    assert best.optim.lr == pytest.approx(out.best_values["optim.lr"])
    assert out.best_metric == max(r["val_vtm_acc_best"] for r in out.trials)
