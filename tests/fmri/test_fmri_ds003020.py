"""OpenNeuro ds003020 as released, and the Stat 214 lab report's ``raw_text.pkl``, end to end.

The tiny copies follow the layouts their authors' code reads, not our own guess:

* ``derivative/`` (HuthLab/deep-fMRI-dataset @ eaaa5cd186e0222c374f58adf29ed13ab66cc02a):
  ``TextGrids/<story>.TextGrid`` read by ``encoding/ridge_utils/textgrid.py`` (Praat long
  "ooTextFile" format, phones on ``tiers[0]``, words on ``tiers[1]``,
  ``encoding/ridge_utils/dsutils.py make_word_ds``), whose non-words are dropped on
  ``x.lower().strip("{}").strip()`` in {sentence_start, sentence_end, br, lg, ls, ns, sp};
  ``respdict.json`` story -> TRs; ``preprocessed_data/<subject>/<story>.hf5`` with dataset
  ``data`` (``encoding/encoding_utils.py get_response``). The feature clock is
  ``load_simulated_trfiles(respdict, tr=2.0, start_time=10.0, pad=5)``
  (``encoding/ridge_utils/stimulus_utils.py``): ``respdict - 5`` TRs, TR midpoints
  ``2k - 10 + 1`` s (``DataSequence.from_grid``); features are cut ``[5 + trim : -trim]`` with
  ``--trim 5`` (``encoding_utils.apply_zscore_and_hrf``, ``encoding.py``) and stacked beside
  the ``.hf5`` rows untrimmed, so each ``.hf5`` holds ``respdict - 20`` rows.
* ``raw_text.pkl``: a dict story -> ``ridge_utils.DataSequence.DataSequence`` whose attributes
  are ``data`` (lower-cased words), ``split_inds``, ``data_times`` (word midpoints) and
  ``tr_times`` (TR midpoints) (``encoding/ridge_utils/DataSequence.py``, ``__init__`` and
  ``from_grid``); responses ``subject2/<story>.npy``, (TRs, voxels), ``len(tr_times) - 15``
  rows. The ``.npy`` layout is second-hand: Stat 214 students' loaders (``np.load(...)[:,
  voxels]``, "X_down has 15 extra rows relative to Y") and the course's reference guide
  (smrichardson.github.io/stat214/Lab3_Reference_Guide.html: downsampled features
  ``(T_s + 15) x p``; 95,556 voxels for subject 3, UTS03's count in ds003020).
* the same stories in our ``fmri-plain`` layout (``importers.py`` docstring) with responses on
  the whole clock, to run the ``paper`` and ``huth`` presets on both layouts: their settings
  come from the lab report's feature scripts (trim ``ceil(5 / TR)`` / ``ceil(10 / TR)``, delays
  1-4) and HuthLab's ``encoding/encoding.py`` (``--trim 5``, ``--ndelays 4``,
  ``np.logspace(1, 3, 10)`` squared by ``ridge_utils/ridge.py``).
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import types
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from polymodal import cli
from polymodal.config import load_config
from polymodal.errors import PolymodalError
from polymodal.models.fmri.data import read_chunk, read_index
from polymodal.models.fmri.features import Trim, aligned_rows, lanczos_interp, make_delayed, zscore
from polymodal.models.fmri.importers import import_huth, import_huth_pickle
from polymodal.models.fmri.pipeline import evaluate, fit, load_stories, load_subject_eval
from polymodal.shards import iter_local_batches

RESPDICT = {"alpha": 90, "bravo": 84, "charlie": 94, "delta": 88}   # 69-74 response rows each
TEST_STORY = "delta"
SUBJECTS = ("UTS01", "UTS02")
N_VOX, DIM, DELAYS = 40, 6, [1, 2, 3, 4]
NOISE_TOKENS = ["{SP}", "sp", "{LG}", "{BR}", "{ls}", "sentence_start", ""]
SHIFT = 5   # TRs the misaligned copy's responses are late by


def praat_long(words: list[tuple[str, float, float]], xmax: float) -> str:
    """A Praat long-format TextGrid: phones on tier 0 (one interval), words on tier 1."""
    def tier(index: int, name: str, items: list[tuple[str, float, float]]) -> list[str]:
        out = [f"    item [{index}]:", '        class = "IntervalTier" ', f'        name = "{name}" ',
               "        xmin = 0 ", f"        xmax = {xmax} ", f"        intervals: size = {len(items)} "]
        for i, (text, a, b) in enumerate(items, 1):
            out += [f"        intervals [{i}]:", f"            xmin = {a} ", f"            xmax = {b} ",
                    f'            text = "{text}" ']
        return out

    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0 ", f"xmax = {xmax} ",
             "tiers? <exists> ", "size = 2 ", "item []: "]
    lines += tier(1, "phone", [("AH", 0.0, xmax)]) + tier(2, "word", words)
    return "\n".join(lines) + "\n"


def lab_tr_times(respdict_trs: int) -> np.ndarray:
    """``load_simulated_trfiles`` + ``DataSequence.from_grid``: respdict - 5 TRs of 2 s, sound
    start at 10 s, each TR's time at its middle."""
    return np.arange(respdict_trs - 5) * 2.0 - 10.0 + 1.0


def make_stories(seed: int = 0):
    """Words (with the lab's noise tokens between them), their embeddings, each story's
    lab-clock design ``make_delayed(zscore(lanczos(...)[10:-5]))`` and its TextGrid intervals."""
    rng = np.random.default_rng(seed)
    vocab = [f"word{i:02d}" for i in range(30)]
    emb = {w: rng.standard_normal(DIM) for w in vocab}
    stories = {}
    for story, n in RESPDICT.items():
        end_audio = 2.0 * (n - 5) - 10.0 - 4.0      # the audio stops a little before the clock does
        t, intervals, kept = 0.0, [], []
        while t < end_audio:
            length = rng.uniform(0.2, 0.5)
            if rng.random() < 0.15:
                intervals.append((NOISE_TOKENS[rng.integers(len(NOISE_TOKENS))], t, t + length))
            else:
                word = vocab[rng.integers(len(vocab))]
                intervals.append((word.upper() if rng.random() < 0.2 else word, t, t + length))
                kept.append((word, t, t + length))
            t += length
        vectors = np.stack([emb[w] for w, _, _ in kept])
        mids = np.array([(a + b) / 2 for _, a, b in kept])                  # a word happens at its midpoint
        on_trs = lanczos_interp(vectors, mids, lab_tr_times(n))
        design = make_delayed(zscore(on_trs[5 + 5:-5]), DELAYS)           # apply_zscore_and_hrf, trim 5
        stories[story] = {"intervals": intervals, "kept": kept, "design": design, "xmax": end_audio + 1.0,
                          "on_trs": on_trs}
    return stories, emb


def planted(stories, seed: int):
    """One subject: (story -> responses (respdict - 20, voxels), per-voxel ceiling correlation).

    A voxel is ``c * signal + sqrt(1 - c^2) * noise`` with unit-variance signal (a fixed linear
    map of the design) and noise, so the true model's correlation is ``c`` (0 for noise voxels)."""
    rng = np.random.default_rng(seed)
    ceiling = rng.choice([0.5, 0.8], N_VOX)
    ceiling[: N_VOX // 4] = 0.0
    weights = rng.standard_normal((DIM * len(DELAYS), N_VOX))
    out = {}
    for story, st in stories.items():
        signal = zscore(st["design"] @ weights)
        noise = rng.standard_normal(signal.shape)
        out[story] = (ceiling * signal + np.sqrt(1 - ceiling ** 2) * noise).astype(np.float32)
        assert out[story].shape[0] == RESPDICT[story] - 20
    return out, ceiling


def write_derivative(root: Path, stories, responses: dict[str, dict[str, np.ndarray]]) -> Path:
    (root / "TextGrids").mkdir(parents=True)
    (root / "respdict.json").write_text(json.dumps(RESPDICT))
    for story, st in stories.items():
        (root / "TextGrids" / f"{story}.TextGrid").write_text(praat_long(st["intervals"], st["xmax"]))
    for subject, per_story in responses.items():
        (root / "preprocessed_data" / subject).mkdir(parents=True)
        for story, data in per_story.items():
            with h5py.File(root / "preprocessed_data" / subject / f"{story}.hf5", "w") as f:
                f["data"] = data
    return root


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    stories, emb = make_stories()
    subjects = {s: planted(stories, seed=10 + i) for i, s in enumerate(SUBJECTS)}
    base = tmp_path_factory.mktemp("ds003020")
    aligned = write_derivative(base / "aligned" / "derivative", stories, {s: r for s, (r, _) in subjects.items()})
    # UTS03 heard two of the stories only
    (aligned / "preprocessed_data" / "UTS03").mkdir()
    for story in ("alpha", "bravo"):
        shutil.copy(aligned / "preprocessed_data" / "UTS01" / f"{story}.hf5", aligned / "preprocessed_data" / "UTS03")
    late = {s: {story: np.roll(r, SHIFT, axis=0) for story, r in per.items()} for s, (per, _) in subjects.items()}
    shifted = write_derivative(base / "shifted" / "derivative", stories, late)
    (base / "vectors.txt").write_text("".join(f"{w} {' '.join(f'{x:.7f}' for x in v)}\n" for w, v in emb.items()))
    return {"stories": stories, "subjects": subjects, "aligned": aligned, "shifted": shifted,
            "vectors": base / "vectors.txt", "base": base}


def _import(source: Path, out: Path, *extra: str) -> None:
    assert cli.main(["data", "import", "--format", "huth", "--source", str(source), "--out", str(out),
                     "--voxel-chunk", "24", "-q", *extra]) == 0


def _config(lab, root: Path, name: str, subjects: list[str], preset: str = "paper") -> Path:
    """A preset cut to four stories (3 folds), on the true word vectors."""
    raw = {"task": "fmri.encoding", "name": name, "seed": 0, "storage_path": str(lab["base"] / "runs"),
           "data": {"train": str(root)},
           "model": {"preset": preset, "feature": "glove", "vectors": str(lab["vectors"]), "cv": 3,
                     "test_stories": [TEST_STORY], "subjects": subjects}}
    config = lab["base"] / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


@pytest.fixture(scope="module")
def fitted(lab):
    """The release imported and fitted through the CLI (`data import`, `train --local`); the
    shifted copy through the same functions, for one subject."""
    root = lab["base"] / "data-aligned"
    _import(lab["aligned"], root, "--subjects", ",".join(SUBJECTS))
    config = _config(lab, root, "aligned", list(SUBJECTS))
    assert cli.main(["train", "--config", str(config), "--local", "-q"]) == 0
    runs = {"aligned": (root, config)}
    root = lab["base"] / "data-shifted"
    import_huth(str(lab["shifted"]), str(root), subjects=[SUBJECTS[0]], chunk=24, progress=False)
    config = _config(lab, root, "shifted", [SUBJECTS[0]])
    fit(load_config(str(config)), progress=False, use_ray=False)
    runs["shifted"] = (root, config)
    return runs


def test_import_reads_the_release_layout(lab, fitted):
    root, _ = fitted["aligned"]
    meta = json.loads((root / "stories.json").read_text())
    assert meta["alpha"] == {"n_trs": 85, "tr": 2.0, "start_time": 10.0, "response_start": 10, "response_end": 5}
    assert read_index(str(root), "UTS02").stories == {s: n - 20 for s, n in RESPDICT.items()}
    index = read_index(str(root), "UTS01")
    assert [(c.start, c.stop) for c in index.chunks] == [(0, 24), (24, 40)]
    np.testing.assert_array_equal(read_chunk(str(root), "UTS01", index.chunks[1])["bravo"],
                                  lab["subjects"]["UTS01"][0]["bravo"][:, 24:])
    # braces stripped before matching: {SP}, {LG}, {BR}, {ls} are not words; kept words lower-cased
    words = {}
    for batch in iter_local_batches(str(root / "words"), 10_000, shuffle=False):
        for story, word, start, end in zip(batch["story"], batch["word"], batch["start"], batch["end"]):
            words.setdefault(str(story), []).append((str(word), (start + end) / 2))
    for story, st in lab["stories"].items():
        assert [w for w, _ in words[story]] == [w for w, _, _ in st["kept"]]
        np.testing.assert_allclose([t for _, t in words[story]], [(a + b) / 2 for _, a, b in st["kept"]])


def test_the_release_on_s3_imports_like_the_local_copy(lab, fitted, s3_server, tmp_path):
    """The derivative/ folder uploaded to S3 as it is (moto on 127.0.0.1) imports to the same
    dataset as the local folder."""
    from polymodal import storage

    source = f"s3://polymodal/fmri-release/{tmp_path.name}/derivative"
    storage.upload_dir(str(lab["aligned"]), source)
    out = tmp_path / "from-s3"
    import_huth(source, str(out), subjects=list(SUBJECTS), chunk=24, progress=False)
    local, _ = fitted["aligned"]
    assert json.loads((out / "stories.json").read_text()) == json.loads((local / "stories.json").read_text())
    for subject in SUBJECTS:
        index = read_index(str(out), subject)
        assert index.stories == read_index(str(local), subject).stories
        for chunk in index.chunks:
            got, want = read_chunk(str(out), subject, chunk), read_chunk(str(local), subject, chunk)
            for story in want:
                np.testing.assert_array_equal(got[story], want[story])
    with pytest.raises(PolymodalError, match="respdict.json not found"):
        import_huth(f"s3://polymodal/fmri-release/{tmp_path.name}/nothing", str(tmp_path / "x"), progress=False)


def test_planted_responses_recovered_near_their_ceiling(lab, fitted):
    root, config = fitted["aligned"]
    cfg = load_config(str(config))
    ev = json.loads((Path(cfg.run_uri) / "eval" / "test.json").read_text())
    assert ev["test_stories"] == [TEST_STORY] and sorted(ev["subjects"]) == list(SUBJECTS)
    for subject in SUBJECTS:
        r = load_subject_eval(cfg.run_uri, subject)["r"]                 # subjects/<s>/eval.safetensors
        assert r.shape == (N_VOX,)
        ceiling = lab["subjects"][subject][1]
        signal = ceiling > 0
        # 24 weights from ~210 training rows cost a little (measured: 0.61 / 0.64 against 0.66 / 0.69)
        assert ceiling[signal].mean() - 0.12 < r[signal].mean() <= ceiling[signal].mean() + 0.05, subject
        assert np.corrcoef(r[signal], ceiling[signal])[0, 1] > 0.7, subject
        assert abs(r[~signal].mean()) < 0.1, subject
    # evaluating the run again (in-process) gives the same numbers
    again = evaluate(cfg, progress=False, use_ray=False)
    assert again["metrics"] == pytest.approx(ev["metrics"], abs=1e-6)


def test_responses_shifted_by_a_few_trs_are_not_recovered(fitted):
    r = {copy: load_subject_eval(load_config(str(config)).run_uri, SUBJECTS[0])["r"]
         for copy, (_, config) in fitted.items()}
    # measured: 0.03 against 0.45 (all voxels, a quarter of them noise)
    assert r["shifted"].mean() < min(0.15, r["aligned"].mean() - 0.25), (r["shifted"].mean(), r["aligned"].mean())


def test_trim_never_cuts_the_responses_twice():
    paper, lab_report = Trim(unit="tr", start=10, end=5), Trim(unit="s", start=5, end=10)
    # ds003020: 85-TR clock, responses on TRs 10..79 -> the paper trim drops nothing more from them
    assert aligned_rows(85, paper, 2.0, (10, 5)) == (slice(10, 80), slice(0, 70))
    assert aligned_rows(85, lab_report, 2.0, (10, 5)) == (slice(10, 80), slice(0, 70))
    # a longer trim drops the same TRs from both
    assert aligned_rows(85, Trim(unit="tr", start=12, end=7), 2.0, (10, 5)) == (slice(12, 78), slice(2, 68))
    # responses on the whole clock: the trim as before
    assert aligned_rows(85, paper, 2.0) == (slice(10, 80), slice(10, 80))
    with pytest.raises(ValueError, match="leaves nothing"):
        aligned_rows(20, Trim(unit="tr", start=12, end=8), 2.0, (10, 5))


def test_hf5_with_the_wrong_row_count_is_named(lab, tmp_path):
    root = tmp_path / "derivative"
    shutil.copytree(lab["aligned"], root)
    bad = root / "preprocessed_data" / "UTS02" / "charlie.hf5"
    with h5py.File(bad, "w") as f:       # respdict - 5 rows: the feature clock, not the release
        f["data"] = np.zeros((RESPDICT["charlie"] - 5, N_VOX), np.float32)
    with pytest.raises(PolymodalError) as err:
        import_huth(str(root), str(tmp_path / "out"), subjects=list(SUBJECTS), progress=False)
    assert all(s in str(err.value) for s in (str(bad), "subject 'UTS02'", "story 'charlie'", "89 response rows",
                                             "expected 74"))
    assert not (tmp_path / "out").exists()    # checked before anything is written
    with pytest.raises(PolymodalError, match=r"subject 'UTS03': no responses for stories \['charlie', 'delta'\]"):
        import_huth(str(lab["aligned"]), str(tmp_path / "out"), progress=False)


# --------------------------------------------------------------------------- presets on both layouts


def write_plain_layout(lab, base: Path, spike_trs: tuple[int, int]) -> Path:
    """The same stories in the ``fmri-plain`` layout (importers.py docstring): words.csv with the
    kept words' TextGrid intervals, stories.json with the lab's clock (respdict - 5 TRs of 2 s,
    start_time 10) and one subject's ``.npy`` responses on the WHOLE clock (nothing trimmed by
    the release, so response_start = response_end = 0). The planted signal is a linear map of the
    delayed features on every TR; the first and last ``spike_trs`` TRs also carry large spikes,
    which only a trim that drops them from the responses survives."""
    rng = np.random.default_rng(3)
    ceiling = lab["subjects"][SUBJECTS[0]][1]
    weights = rng.standard_normal((DIM * len(DELAYS), N_VOX))
    rows = ["story,word,start,end"]
    (base / "responses" / "P01").mkdir(parents=True)
    for story, st in lab["stories"].items():
        rows += [f"{story},{w},{a:.6f},{b:.6f}" for w, a, b in st["kept"]]
        signal = zscore(make_delayed(zscore(st["on_trs"]), DELAYS) @ weights)
        resp = ceiling * signal + np.sqrt(1 - ceiling ** 2) * rng.standard_normal(signal.shape)
        head, tail = spike_trs
        resp[:head] += 40 * rng.standard_normal((head, N_VOX))
        resp[len(resp) - tail:] += 40 * rng.standard_normal((tail, N_VOX))
        np.save(base / "responses" / "P01" / f"{story}.npy", resp.astype(np.float32))
    (base / "words.csv").write_text("\n".join(rows) + "\n")
    (base / "stories.json").write_text(json.dumps({s: {"n_trs": n - 5, "tr": 2.0, "start_time": 10.0}
                                                   for s, n in RESPDICT.items()}))
    return base


@pytest.fixture(scope="module")
def plain(lab):
    source = write_plain_layout(lab, lab["base"] / "plain-source", spike_trs=(3, 5))
    root = lab["base"] / "data-plain"
    assert cli.main(["data", "import", "--format", "fmri-plain", "--source", str(source), "--out", str(root),
                     "--voxel-chunk", "24", "-q"]) == 0
    return root


def test_the_presets_state_their_sources_settings():
    from polymodal.config import validate_model_section

    paper, errors = validate_model_section("fmri.encoding", {"preset": "paper"})
    assert not errors
    # the lab report: 5 s / 10 s of the clock, ceil(s / TR) TRs, delays 1-4
    assert paper.trim.model_dump() == {"unit": "s", "start": 5, "end": 10} and paper.trim.trs(2.0) == (3, 5)
    assert paper.delays == [1, 2, 3, 4]
    huth, errors = validate_model_section("fmri.encoding", {"preset": "huth"})
    assert not errors
    # encoding.py: --trim 5 -> [10:-5], --ndelays 4, alphas logspace(1, 3, 10) squared, R^2
    assert huth.trim.trs(2.0) == (10, 5) and huth.delays == [1, 2, 3, 4] and huth.score == "r2"
    np.testing.assert_allclose(huth.alphas.values, np.logspace(1, 3, 10) ** 2)


@pytest.mark.parametrize("preset, kept", [("paper", 8), ("huth", 15)])
@pytest.mark.parametrize("layout", ["ds003020", "plain"])
def test_each_preset_on_each_layout_trims_once_and_recovers_the_signal(lab, fitted, plain, layout, preset, kept):
    """ds003020's responses already lack the clock's first 10 and last 5 TRs (recorded by the
    importer): both presets keep exactly those rows, cutting nothing more from the responses.
    The plain layout's responses cover the clock: the paper preset cuts 3 / 5 TRs (5 s / 10 s at
    TR 2 s) and huth 10 / 5 from features and responses alike, and the spiked TRs never enter."""
    from polymodal.models.fmri.distributed import ResponseSelection
    from polymodal.models.fmri.pipeline import design, prepare

    root, subject = (fitted["aligned"][0], SUBJECTS[0]) if layout == "ds003020" else (plain, "P01")
    cfg = load_config(str(_config(lab, root, f"{layout}-{preset}", [subject], preset=preset)))
    prep = prepare(cfg)
    X, _ = design(prep.featurizer, prep.stories, prep.train)
    clock = {s: n - 5 for s, n in RESPDICT.items()}
    want = sum(clock[s] - (15 if layout == "ds003020" else kept) for s in prep.train)
    assert X.shape == (want, DIM * len(DELAYS))
    sel = ResponseSelection(str(root), subject, prep.train, prep.tr, cfg.model.trim, prep.offsets(prep.train))
    stored = read_chunk(str(root), subject, read_index(str(root), subject).chunks[0], prep.train)
    Y = np.vstack([sel.cut(s, stored[s]) for s in prep.train])
    assert Y.shape[0] == want and np.abs(Y).max() < 8         # unit-variance signal + noise; no spike kept
    fit(cfg, progress=False, use_ray=False)
    r = load_subject_eval(cfg.run_uri, subject)["r"]
    ceiling = lab["subjects"][SUBJECTS[0]][1]
    signal = ceiling > 0
    assert ceiling[signal].mean() - 0.15 < r[signal].mean(), (layout, preset, r[signal].mean())
    assert abs(r[~signal].mean()) < 0.12
    ev = json.loads((Path(cfg.run_uri) / "eval" / "test.json").read_text())
    assert min(cfg.model.alphas.values) <= ev["subjects"][subject]["median_alpha"] <= max(cfg.model.alphas.values)


# --------------------------------------------------------------------------- raw_text.pkl


def _lab_datasequence(monkeypatch) -> type:
    """A class that pickles as ``ridge_utils.DataSequence.DataSequence``, with the lab's attributes."""
    class DataSequence:
        def __init__(self, data, split_inds, data_times=None, tr_times=None):
            self.data, self.split_inds, self.data_times, self.tr_times = data, split_inds, data_times, tr_times

    DataSequence.__module__, DataSequence.__qualname__ = "ridge_utils.DataSequence", "DataSequence"
    package, module = types.ModuleType("ridge_utils"), types.ModuleType("ridge_utils.DataSequence")
    module.DataSequence, package.DataSequence = DataSequence, module
    monkeypatch.setitem(sys.modules, "ridge_utils", package)
    monkeypatch.setitem(sys.modules, "ridge_utils.DataSequence", module)
    return DataSequence


def test_raw_text_pickle_imports_like_the_release(lab, fitted, tmp_path, monkeypatch):
    src = tmp_path / "lab3"
    with monkeypatch.context() as patch:
        cls = _lab_datasequence(patch)
        sequences = {}
        for story, st in lab["stories"].items():
            # DataSequence.from_grid: midpoints, split_inds from the word starts, tr_times = triggers + tr / 2
            starts, ends = np.array([a for _, a, _ in st["kept"]]), np.array([b for _, _, b in st["kept"]])
            triggers = lab_tr_times(RESPDICT[story]) - 1.0
            split = [(starts < t + 2.0).sum() for t in triggers][:-1]           # numpy ints, as the lab's
            sequences[story] = cls([w for w, _, _ in st["kept"]], split, (starts + ends) / 2.0, triggers + 1.0)
        src.mkdir()
        (src / "raw_text.pkl").write_bytes(pickle.dumps(sequences))
    assert "ridge_utils" not in sys.modules     # the importer must not need the lab's code
    for folder, subject in (("subject2", "UTS01"), ("subject3", "UTS02")):
        (src / folder).mkdir()
        for story, data in lab["subjects"][subject][0].items():
            np.save(src / folder / f"{story}.npy", data)
    out = tmp_path / "imported"
    assert cli.main(["data", "import", "--format", "huth-pkl", "--source", str(src), "--out", str(out),
                     "--voxel-chunk", "24", "-q"]) == 0
    # the same dataset as the ds003020 import: clock, response window, word times, responses
    release, _ = fitted["aligned"]
    assert json.loads((out / "stories.json").read_text()) == json.loads((release / "stories.json").read_text())
    index = read_index(str(out), "subject3")
    assert index.stories == read_index(str(release), "UTS02").stories
    np.testing.assert_array_equal(read_chunk(str(out), "subject3", index.chunks[1])["delta"],
                                  read_chunk(str(release), "UTS02", index.chunks[1])["delta"])
    mine, theirs = load_stories(str(out)), load_stories(str(release))
    for story in RESPDICT:
        assert mine[story].words == theirs[story].words
        np.testing.assert_allclose(mine[story].times, theirs[story].times, atol=1e-9)
    # the course's own alignment puts the same rows at [5:-10] of the clock instead
    import_huth_pickle(str(src), str(tmp_path / "course"), subjects=["subject2"], stories=["alpha"],
                       response_window=(5, 10), progress=False)
    assert json.loads((tmp_path / "course" / "stories.json").read_text())["alpha"]["response_start"] == 5


def test_unknown_pickle_class_is_refused(tmp_path):
    src = tmp_path / "lab3"
    (src / "subject2").mkdir(parents=True)
    np.save(src / "subject2" / "s.npy", np.zeros((3, 2), np.float32))
    (src / "raw_text.pkl").write_bytes(b"cos\nsystem\n(S'touch owned'\ntR.")      # os.system("touch owned")
    with pytest.raises(PolymodalError, match=r"raw_text.pkl: refusing to load os.system"):
        import_huth_pickle(str(src), str(tmp_path / "out"), progress=False)
    # a dict of a class other than the lab's DataSequence
    (src / "raw_text.pkl").write_bytes(pickle.dumps({"s": OrderedDict()}))
    with pytest.raises(PolymodalError, match=r"refusing to load collections.OrderedDict"):
        import_huth_pickle(str(src), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists() and not Path("owned").exists()
