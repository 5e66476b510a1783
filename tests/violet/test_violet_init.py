"""VIOLET's ``model.init``: a fine-tuning run starts from the pre-training run's folder or from any
checkpoint that run wrote, in the layouts both harnesses write (``polymodal.train.loop``):

* Ray Train: ``<run>/checkpoint_000000/{model/, deepspeed/, state.json}`` and ``<run>/summary.json``
  written after ``fit`` (``summarize_result``), so a run stopped early has checkpoints but no summary;
* ``--local``: ``<run>/checkpoints/epoch_NNNN/{model/, deepspeed/, state.json}`` and a summary after
  every epoch.

The checkpoints here are real exports of tiny VIOLET models (``write_export``), each with its own
weights, so the test can tell which one was loaded. No training, no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import polymodal.models.violet.task as violet_task  # registers the violet.* tasks
from polymodal.config import load_config
from polymodal.errors import PolymodalError
from polymodal.registry import get_task
from polymodal.runs import resolve_weights
from polymodal.testing.tiny import write_tiny_bert
from polymodal.train.checkpoint import STATE_FILE, trainable_state, write_export

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BERT, the pre-training config and three pre-trained models with different weights."""
    root = tmp_path_factory.mktemp("violet-init")
    bert = write_tiny_bert(root / "bert", ["a red disc moves left", "a blue square moves up"] * 8)
    cfg = load_config(str(ROOT / "jobs" / "configs" / "violet_tiny_pretrain.yaml"),
                      [f"model.bert={bert}", f"data.train={root / 'none'}", f"storage_path={root / 'runs'}"])
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(get_task("violet.pretrain").build_model(cfg.model))
    return {"root": root, "cfg": cfg, "models": models}


def _checkpoint(folder: Path, setup, k: int, complete: bool = True) -> Path:
    """A checkpoint folder as the loop publishes it: ``model/`` export, then ``state.json``."""
    write_export(folder / "model", setup["cfg"], trainable_state(setup["models"][k], zero_stage=2),
                 {"epoch": k, "metrics": {}})
    (folder / "deepspeed").mkdir()
    if complete:
        (folder / STATE_FILE).write_text(json.dumps({"epoch": k, "micro_step": k, "global_step": k}))
    return folder


def _qa_model(setup, init: str):
    """A QA model (new answer head) built with ``model.init``, as a fine-tuning run builds it."""
    qa = load_config(str(ROOT / "jobs" / "configs" / "violet_tiny_qa.yaml"),
                     [f"model.bert={setup['cfg'].model.bert}", f"data.train={setup['root'] / 'none'}",
                      f"model.init={init}"])
    return get_task("violet.oeqa").build_model(qa.model)


def _loaded_from(model, setup) -> int:
    """Which of the pre-trained models ``model``'s trunk came from."""
    got = model.video_proj.weight.detach()
    hits = [k for k, m in enumerate(setup["models"]) if torch.equal(got, m.video_proj.weight.detach())]
    assert len(hits) == 1, hits
    return hits[0]


def test_init_from_a_ray_train_run_folder_and_its_checkpoints(setup, tmp_path):
    """Ray layout: the run folder gives the best checkpoint its summary names (not the newest); a
    ``checkpoint_000001`` folder or its ``model/`` export gives itself; without summary.json the newest
    complete checkpoint (a half-written one, without state.json, is passed over)."""
    run = tmp_path / "violet-webvid-pretrain"
    _checkpoint(run / "checkpoint_000000", setup, 0)
    _checkpoint(run / "checkpoint_000001", setup, 1)
    _checkpoint(run / "checkpoint_000002", setup, 2, complete=False)
    assert _loaded_from(_qa_model(setup, str(run)), setup) == 1  # no summary yet: newest complete

    (run / "summary.json").write_text(json.dumps({
        "task": "violet.pretrain", "run": str(run), "latest_checkpoint": str(run / "checkpoint_000001"),
        "best_checkpoint": str(run / "checkpoint_000000"), "metrics": {}}))
    assert _loaded_from(_qa_model(setup, str(run)), setup) == 0  # the best one
    assert resolve_weights(str(run), which="latest") == str(run / "checkpoint_000001")
    assert _loaded_from(_qa_model(setup, str(run / "checkpoint_000001")), setup) == 1
    assert _loaded_from(_qa_model(setup, str(run / "checkpoint_000001" / "model")), setup) == 1


def test_init_from_a_local_run_and_its_epoch_folder(setup, tmp_path):
    """``--local`` layout: the epoch folder itself, and the run folder without a summary (newest
    complete ``checkpoints/epoch_NNNN``)."""
    run = tmp_path / "local-run"
    _checkpoint(run / "checkpoints" / "epoch_0000", setup, 2)
    _checkpoint(run / "checkpoints" / "epoch_0001", setup, 1)
    assert _loaded_from(_qa_model(setup, str(run / "checkpoints" / "epoch_0000")), setup) == 2
    assert _loaded_from(_qa_model(setup, str(run) + "/"), setup) == 1


def test_init_that_leads_nowhere_names_the_path(setup, tmp_path):
    """A missing folder, an empty run folder and a run with only a half-written checkpoint each raise
    a PolymodalError naming the path; ``fit`` raises it before any training starts."""
    empty = tmp_path / "empty-run"
    (empty / "checkpoint_000000").mkdir(parents=True)  # no state.json: never completed
    for bad, why in ((tmp_path / "no-such-run", "does not exist"), (empty, "holds no checkpoint")):
        with pytest.raises(PolymodalError, match=f"{bad}.*{why}.*run folder"):
            _qa_model(setup, str(bad))
    qa = load_config(str(ROOT / "jobs" / "configs" / "violet_tiny_qa.yaml"),
                     [f"model.bert={setup['cfg'].model.bert}", f"data.train={setup['root'] / 'none'}",
                      f"model.init={tmp_path / 'no-such-run'}", f"storage_path={tmp_path / 'runs'}"])
    with pytest.raises(PolymodalError, match="no-such-run does not exist"):
        get_task("violet.oeqa").fit(qa, progress=False, local=True)
    assert not (tmp_path / "runs").exists()


def test_shipped_fine_tuning_configs_start_from_the_pretraining_run():
    """The paper fine-tuning configs point ``init`` at the pre-training config's run folder
    (``storage_path/name``), which both harnesses write, not at one harness's checkpoint name."""
    pre = load_config(str(ROOT / "jobs" / "configs" / "violet_paper_pretrain.yaml"))
    for name in ("violet_paper_msrvtt_qa.yaml", "violet_paper_msrvtt_retrieval.yaml"):
        cfg = load_config(str(ROOT / "jobs" / "configs" / name))
        assert cfg.model.init == pre.run_uri, name


def test_a_fine_tuned_export_loads_without_its_pretraining_run(setup, tmp_path):
    """Evaluate and serve load a fine-tuned export whole; its config's ``init`` (here a run that has
    since been deleted) is not read again."""
    run = tmp_path / "pretrain-run"
    _checkpoint(run / "checkpoint_000000", setup, 1)
    qa = load_config(str(ROOT / "jobs" / "configs" / "violet_tiny_qa.yaml"),
                     [f"model.bert={setup['cfg'].model.bert}", f"data.train={setup['root'] / 'none'}",
                      f"model.init={run}"])
    task = get_task("violet.oeqa")
    torch.manual_seed(5)
    tuned = task.build_model(qa.model)
    write_export(tmp_path / "qa" / "model", qa, trainable_state(tuned, zero_stage=2), {"epoch": 0, "metrics": {}})
    import shutil

    shutil.rmtree(run)
    cfg, model = task.load_checkpoint(str(tmp_path / "qa"))
    assert cfg.model.init == str(run) and not model.training
    assert torch.equal(model.answer_head[-1].weight, tuned.answer_head[-1].weight.detach())
