"""The fMRI encoding pipeline end to end: plain-layout import to the S3 server, features, Ray
ridge per voxel chunk, held-out evaluation, report, rerun, and serving over HTTP."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest
import yaml
from support import served

from polymodal import cli, storage
from polymodal.config import validate_config
from polymodal.errors import ConfigError, PolymodalError
from polymodal.models.fmri.distributed import load_solution
from polymodal.models.fmri.features import Trim, lanczos_interp, make_delayed, tr_times, zscore
from polymodal.models.fmri.pipeline import load_subject_eval
from polymodal.models.fmri.synth import make_synthetic
from polymodal.registry import get_task

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
TRIM = Trim(unit="tr", start=5, end=5)
TEST_STORIES = ["story01", "story06"]


@pytest.fixture(scope="module")
def synth():
    """Two subjects who heard the same 8 stories (120 TRs each): 160 voxels, a quarter noise."""
    return {f"S0{i}": make_synthetic(n_stories=8, trs_per_story=120, n_voxels=160, dim=8, trim=TRIM,
                                     seed=20 + i, story_seed=5) for i in (1, 2)}


@pytest.fixture(scope="module")
def plain_layout(synth, tmp_path_factory) -> Path:
    """The documented plain layout: words.csv, stories.json, .npy (S01) and .hf5 (S02) responses."""
    base = tmp_path_factory.mktemp("plain")
    first = synth["S01"]
    rows = ["story,word,start,end"]
    for name, st in first.stories.items():
        rows += [f"{name},{w},{a:.6f},{b:.6f}" for w, a, b in zip(st.words, st.starts, st.ends)]
    (base / "words.csv").write_text("\n".join(rows) + "\n")
    (base / "stories.json").write_text(json.dumps({n: {"n_trs": st.responses.shape[0], "tr": first.tr}
                                                   for n, st in first.stories.items()}))
    for subject, data in synth.items():
        folder = base / "responses" / subject
        folder.mkdir(parents=True)
        for name, st in data.stories.items():
            if subject == "S01":
                np.save(folder / f"{name}.npy", st.responses)
            else:
                with h5py.File(folder / f"{name}.hf5", "w") as f:
                    f["data"] = st.responses
    (base / "vectors.txt").write_text("".join(f"{w} {' '.join(f'{x:.7f}' for x in v)}\n"
                                              for w, v in first.embeddings.items()))
    return base


def _write_config(tmp_path: Path, root: str, storage_path: str, **model) -> Path:
    raw = {"task": "fmri.encoding", "name": "glove", "seed": 0, "storage_path": storage_path,
           "data": {"train": root},
           "model": {"preset": "tiny", "feature": "glove", "vectors": f"{root}/vectors.txt",
                     "trim": TRIM.model_dump(), "test_stories": TEST_STORIES, **model}}
    path = tmp_path / f"fmri-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def fitted(ray_cluster, plain_layout, s3_server, tmp_path_factory):
    """Import to S3 and fit with `polymodal train` (Ray tasks per chunk): (root, run, config path)."""
    prefix = f"s3://polymodal/test-fmri-{uuid.uuid4().hex}"
    root = f"{prefix}/data"
    assert cli.main(["data", "import", "--format", "fmri-plain", "--source", str(plain_layout), "--out", root,
                     "--voxel-chunk", "64", "-q"]) == 0
    storage.write_text(f"{root}/vectors.txt", (plain_layout / "vectors.txt").read_text())
    config = _write_config(tmp_path_factory.mktemp("cfg"), root, f"{prefix}/runs")
    assert cli.main(["train", "--config", str(config), "-q"]) == 0
    return root, f"{prefix}/runs/glove", config


def test_recovered_correlations_match_the_planted_snr(fitted, synth):
    _, run, _ = fitted
    ev = json.loads(storage.read_text(f"{run}/eval/test.json"))
    assert sorted(ev["subjects"]) == ["S01", "S02"] and ev["test_stories"] == TEST_STORIES
    for subject, data in synth.items():
        r = load_subject_eval(run, subject)["r"]
        signal, noise = data.snr > 0, data.snr == 0
        # a linear model of the right features reaches the true model's correlation (minus a little
        # estimation error); noise voxels centre on zero
        assert abs(r[signal].mean() - data.expected_corr[signal].mean()) < 0.05, subject
        assert np.corrcoef(r[signal], data.expected_corr[signal])[0, 1] > 0.8
        assert abs(r[noise].mean()) < 0.06
        assert ev["subjects"][subject]["mean"] == pytest.approx(float(r.mean()), abs=1e-6)
    summary = json.loads(storage.read_text(f"{run}/summary.json"))
    assert summary["metrics"]["cv_score"] > 0.3 and summary["best_checkpoint"] == run


def test_weights_and_alphas_are_chunked_safetensors(fitted):
    _, run, _ = fitted
    chunks = storage.listdir(f"{run}/subjects/S01/ridge/chunks")
    assert sorted(chunks) == ["v000000-000064.safetensors", "v000064-000128.safetensors",
                              "v000128-000160.safetensors"]
    sol = load_solution(f"{run}/subjects/S01/ridge")
    assert sol["coef"].shape == (8 * 4, 160)
    grid = np.logspace(0, 4, 6)
    assert np.isclose(sol["best_alphas"][:, None], grid[None], rtol=1e-5).any(axis=1).all()
    assert len(np.unique(sol["best_alphas"])) > 1   # per-voxel alphas, not one shared penalty


def test_evaluate_report_and_rerun(fitted, capsys):
    _, run, config = fitted
    before = json.loads(storage.read_text(f"{run}/eval/test.json"))
    assert cli.main(["evaluate", "--config", str(config), "-q"]) == 0
    after = json.loads(storage.read_text(f"{run}/eval/test.json"))
    assert after["metrics"] == pytest.approx(before["metrics"], abs=1e-6)
    assert cli.main(["report", "--config", str(config)]) == 0
    report = storage.read_text(f"{run}/report/report.md")
    assert "| S01 |" in report and "story06" in report
    for png in ("hist.png", "stories.png", "subjects.png", "alphas.png"):
        assert storage.read_bytes(f"{run}/report/{png}").startswith(PNG)
    # a rerun finds every chunk solved and solves nothing again
    assert cli.main(["train", "--config", str(config), "-q"]) == 0
    assert json.loads(storage.read_text(f"{run}/subjects/S02/ridge/index.json"))["solved_now"] == []
    assert cli.main(["evaluate", "--config", str(config), "--split", "val", "-q"]) == 2
    assert "--split test" in capsys.readouterr().err


def test_served_predictions_equal_the_fitted_map(fitted, synth):
    """Independent reference: Lanczos + z-score + delays of the true embeddings, times the stored weights."""
    _, run, _ = fitted
    cfg, model = get_task("fmri.encoding").load_checkpoint(run)
    story = synth["S02"].stories["story06"]
    words = [{"word": w, "start": a, "end": b} for w, a, b in zip(story.words, story.starts, story.ends)]
    req = get_task("fmri.encoding").request_model(cfg.model)(subject="S02", words=words, n_trs=120, voxels=[3, 77])
    (resp,) = get_task("fmri.encoding").serve_predict(model, [req])
    vectors = np.stack([synth["S02"].embeddings[w] for w in story.words])
    X = make_delayed(zscore(lanczos_interp(vectors, (story.starts + story.ends) / 2, tr_times(120, 2.0))), [1, 2, 3, 4])
    expected = X @ load_solution(f"{run}/subjects/S02/ridge")["coef"][:, [3, 77]]
    np.testing.assert_allclose(np.array(resp.predictions), expected, atol=2e-4)
    r = load_subject_eval(run, "S02")["r"]
    assert resp.test_r == pytest.approx(r[[3, 77]].tolist(), abs=1e-6)


def test_one_short_word_is_predicted_for_two_trs(fitted):
    """Found by fuzzing every task: a story that ends within its first TR gave the Lanczos filter
    one TR time and a 500; it is predicted for the two TRs interpolation needs."""
    _, run, _ = fitted
    task = get_task("fmri.encoding")
    cfg, model = task.load_checkpoint(run)
    req = task.request_model(cfg.model)(subject="S02", words=[{"word": "the", "start": 1.0, "end": 1.3}], top_k=2)
    (resp,) = task.serve_predict(model, [req])
    assert resp.n_trs == 2 and np.isfinite(resp.predictions).all() and np.shape(resp.predictions) == (2, 2)
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        task.request_model(cfg.model)(subject="S02", words=req.words, n_trs=1)


def test_config_errors_name_the_field(fitted, tmp_path):
    root, _, _ = fitted
    cfg = validate_config(yaml.safe_load(_write_config(tmp_path, root, str(tmp_path), test_stories=["nope"],
                                                       subjects=["S01"]).read_text()))
    with pytest.raises(ConfigError, match=r"model.test_stories: unknown stories \['nope'\]"):
        get_task("fmri.encoding").fit(cfg, progress=False, local=True)
    cfg = validate_config(yaml.safe_load(_write_config(tmp_path, root, str(tmp_path), subjects=["S09"]).read_text()))
    with pytest.raises(ConfigError, match=r"model.subjects: unknown subjects \['S09'\]"):
        get_task("fmri.encoding").fit(cfg, progress=False, local=True)
    mixed = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": [{"uri": root, "weight": 1.0}]})})
    with pytest.raises(ConfigError, match="data.train: fmri.encoding reads one dataset root"):
        get_task("fmri.encoding").fit(mixed, progress=False, local=True)
    with pytest.raises(ConfigError, match="needs model.vectors"):
        validate_config({"task": "fmri.encoding", "data": {"train": root}, "model": {"feature": "word2vec"}})
    cfg = validate_config({"task": "fmri.encoding", "data": {"train": str(tmp_path)}, "model": {}})
    with pytest.raises(PolymodalError, match="not an fMRI dataset root"):
        get_task("fmri.encoding").fit(cfg, progress=False, local=True)


def test_local_fit_without_ray_equals_the_ray_fit(fitted, tmp_path):
    """`polymodal train --local` (chunks solved in-process) and the Ray path agree."""
    root, run, _ = fitted
    config = _write_config(tmp_path, root, str(tmp_path / "runs"))
    assert cli.main(["train", "--config", str(config), "--local", "-q"]) == 0
    local = load_solution(str(tmp_path / "runs" / "glove" / "subjects" / "S01" / "ridge"))
    remote = load_solution(f"{run}/subjects/S01/ridge")
    np.testing.assert_allclose(local["coef"], remote["coef"], atol=1e-5)
    np.testing.assert_array_equal(local["best_alphas"], remote["best_alphas"])


def test_encoder_features_from_a_saved_transformer(fitted, synth, tmp_path):
    """feature: encoder with a tiny random BERT saved like a real checkpoint (config + tokenizer)."""
    from transformers import BertConfig, BertModel

    from polymodal.text import train_tokenizer

    root, _, _ = fitted
    folder = tmp_path / "tiny-bert"
    texts = [" ".join(st.words) for st in synth["S01"].stories.values()]
    tokenizer = train_tokenizer(texts, str(folder), vocab_size=300)
    BertModel(BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    config = _write_config(tmp_path, root, str(tmp_path / "runs"), feature="encoder", encoder=tokenizer,
                           layer=1, context_words=3, subjects=["S01"])
    assert cli.main(["train", "--config", str(config), "--local", "-q"]) == 0
    run = tmp_path / "runs" / "glove"
    assert load_solution(str(run / "subjects" / "S01" / "ridge"))["coef"].shape == (16 * 4, 160)
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert np.isfinite(list(metrics.values())).all()


def test_mlm_data_from_the_transcripts_keeps_test_stories_out(fitted, tmp_path):
    from polymodal.shards import iter_local_batches, open_dataset

    root, _, _ = fitted
    out = str(tmp_path / "mlm")
    assert cli.main(["data", "mlm", "--source", root, "--out", out, "--exclude", ",".join(TEST_STORIES),
                     "--val-stories", "story00", "--vocab-size", "200", "--max-length", "64", "-q"]) == 0
    seen = {}
    for split in ("train", "val"):
        manifest = open_dataset(f"{out}/{split}")
        assert manifest.task == "fmri.mlm" and manifest.num_rows > 0
        seen[split] = {str(s) for b in iter_local_batches(f"{out}/{split}", 512, shuffle=False) for s in b["story"]}
    assert seen["val"] == {"story00"}
    assert seen["train"] == {f"story0{i}" for i in range(8)} - {"story00", *TEST_STORIES}
    assert cli.main(["data", "mlm", "--source", root, "--out", out, "--exclude", "nope", "-q"]) == 2


def test_tune_sweep_trials_are_ridge_fits(fitted, tmp_path):
    """The shipped space, cut to the feature-space grid: the true embeddings beat bag-of-words."""
    from polymodal.config import load_config
    from polymodal.tune import load_space, run_sweep

    root, _, _ = fitted
    cfg = load_config(str(_write_config(tmp_path, root, str(tmp_path / "runs"))))
    space = load_space(str(ROOT / "tune_spaces" / "fmri.yaml"), cfg)
    space = space.model_copy(update={"params": {"model.feature": space.params["model.feature"]}})
    out = run_sweep(cfg, space)
    assert out.complete and len(out.trials) == 2, out.trials
    assert all(t["status"] == "finished" for t in out.trials), out.trials
    assert out.best_values == {"model.feature": "glove"}
    scores = {t["model.feature"]: t["cv_score_final"] for t in out.trials}
    assert scores["glove"] > scores["bow"] > 0.05
    for trial in out.trials:  # each trial is a complete run: summary, weights, held-out evaluation
        summary = json.loads(storage.read_text(f"{out.sweep_uri}/trials/{trial['trial_id']}/summary.json"))
        assert summary["metrics"]["cv_score"] == pytest.approx(trial["cv_score_final"])


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def server(fitted):
    from polymodal.serving.app import parse_args

    _, run, _ = fitted
    with served(parse_args({"checkpoint": run, "max_body_bytes": 500_000}), "fmri") as url:
        yield url


def _words(synth, story="story01"):
    st = synth["S01"].stories[story]
    return [{"word": w, "start": round(a, 4), "end": round(b, 4)} for w, a, b in zip(st.words, st.starts, st.ends)]


def test_http_top_k_voxels_are_the_best_predicted(server, fitted, synth):
    _, run, _ = fitted
    r = httpx.post(f"{server}/v1/predict", json={"subject": "S01", "words": _words(synth), "top_k": 5}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    test_r = load_subject_eval(run, "S01")["r"]
    assert body["voxels"] == np.argsort(-test_r)[:5].tolist()
    assert body["n_trs"] == int(np.ceil(synth["S01"].stories["story01"].ends.max() / 2.0))
    assert np.array(body["predictions"]).shape == (body["n_trs"], 5)


def test_http_bad_stories_are_422_with_the_reason(server, synth):
    words = _words(synth)
    cases = [
        ({"subject": "S07", "words": words}, "unknown subject 'S07'"),
        ({"subject": "S01", "words": []}, "words"),
        ({"subject": "S01", "words": [words[1], words[0], *words[2:]]}, "times must not decrease"),
        ({"subject": "S01", "words": words, "voxels": [0, 999]}, "outside 0..159"),
        ({"subject": "S01", "words": [{"word": "x", "start": 2.0, "end": 1.0}]}, "before it starts"),
    ]
    for body, reason in cases:
        r = httpx.post(f"{server}/v1/predict", json=body, timeout=60)
        assert r.status_code == 422, (reason, r.text)
        assert reason in r.json()["detail"], r.text
