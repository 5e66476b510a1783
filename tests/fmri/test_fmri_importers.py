"""TextGrid parsing and the Huth-lab / plain importers, on small hand-made layouts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from polymodal import storage
from polymodal.errors import PolymodalError
from polymodal.models.fmri.data import read_chunk, read_index
from polymodal.models.fmri.importers import import_huth, import_plain, parse_textgrid, textgrid_words
from polymodal.shards import iter_local_batches

WORDS = [("sp", 0.0, 0.5), ("hello", 0.5, 0.9), ("world", 0.9, 1.4), ("br", 1.4, 1.6), ("again", 1.6, 2.0)]


def long_textgrid(words=WORDS) -> str:
    """Praat's long text format with a phone tier first and the words on tier index 1."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0 ", "xmax = 2 ",
             "tiers? <exists> ", "size = 2 ", "item []: ",
             "    item [1]:", '        class = "IntervalTier" ', '        name = "phone" ',
             "        xmin = 0 ", "        xmax = 2 ", "        intervals: size = 1 ",
             "        intervals [1]:", "            xmin = 0 ", "            xmax = 2 ", '            text = "AH" ',
             "    item [2]:", '        class = "IntervalTier" ', '        name = "word" ',
             "        xmin = 0 ", "        xmax = 2 ", f"        intervals: size = {len(words)} "]
    for i, (w, a, b) in enumerate(words, 1):
        lines += [f"        intervals [{i}]:", f"            xmin = {a} ", f"            xmax = {b} ",
                  f'            text = "{w}" ']
    return "\n".join(lines) + "\n"


def short_textgrid(words=WORDS) -> str:
    vals = ['"ooTextFile"', '"TextGrid"', "", "0", "2", "<exists>", "2",
            '"IntervalTier"', '"phone"', "0", "2", "1", "0", "2", '"AH"',
            '"IntervalTier"', '"word"', "0", "2", str(len(words))]
    for w, a, b in words:
        vals += [str(a), str(b), f'"{w}"']
    return "File type = " + vals[0] + "\nObject class = " + vals[1] + "\n" + "\n".join(vals[2:]) + "\n"


@pytest.mark.parametrize("make", [long_textgrid, short_textgrid])
def test_textgrid_both_formats(make):
    tiers = parse_textgrid(make())
    assert [t["name"] for t in tiers] == ["phone", "word"]
    assert tiers[1]["items"][1] == (0.5, 0.9, "hello")
    assert textgrid_words(make()) == [("hello", 0.5, 0.9), ("world", 0.9, 1.4), ("again", 1.6, 2.0)]


def test_textgrid_errors_name_the_file():
    with pytest.raises(PolymodalError, match="story.TextGrid: not a Praat TextGrid"):
        parse_textgrid('File type = "ooTextFile"\nObject class = "Other"\n', "story.TextGrid")
    with pytest.raises(PolymodalError, match="ends early"):
        parse_textgrid(long_textgrid()[:400], "x")
    with pytest.raises(PolymodalError, match="no interval tier at index 5"):
        textgrid_words(long_textgrid(), tier=5)


def _huth_layout(tmp_path, n_vox=10):
    import h5py

    root = tmp_path / "derivative"
    (root / "TextGrids").mkdir(parents=True)
    respdict = {"storyA": 25, "storyB": 30}
    rng = np.random.default_rng(0)
    responses = {}
    for story, n in respdict.items():
        (root / "TextGrids" / f"{story}.TextGrid").write_text(long_textgrid())
        # as released: the feature clock's respdict - 5 TRs cut [10:-5]
        responses[story] = rng.standard_normal((n - 20, n_vox)).astype(np.float32)
        for subject in ("UTS01", "UTS02"):
            (root / "preprocessed_data" / subject).mkdir(parents=True, exist_ok=True)
            with h5py.File(root / "preprocessed_data" / subject / f"{story}.hf5", "w") as f:
                f["data"] = responses[story] * (1 if subject == "UTS01" else 2)
    (root / "respdict.json").write_text(json.dumps(respdict))
    return root, responses


def test_huth_layout_imports_to_s3(s3_bucket_uri, tmp_path):
    root, responses = _huth_layout(tmp_path)
    out = f"{s3_bucket_uri}/huth"
    summary = import_huth(str(root), out, chunk=4, progress=False)
    assert summary["subjects"] == ["UTS01", "UTS02"] and summary["words"] == 6
    index = read_index(out, "UTS02")
    assert index.n_voxels == 10 and index.stories == {"storyA": 5, "storyB": 10} and len(index.chunks) == 3
    got = read_chunk(out, "UTS02", index.chunks[1])
    np.testing.assert_array_equal(got["storyB"], 2 * responses["storyB"][:, 4:8])
    words = next(iter_local_batches(f"{out}/words", 100, shuffle=False))
    assert list(words["word"]) == ["hello", "world", "again"] * 2


def _everything(out):
    """stories.json, the words and every subject's responses, chunk by chunk, of a dataset."""
    found = {"stories": (out / "stories.json").read_text(),
             "words": next(iter_local_batches(str(out / "words"), 100, shuffle=False))["word"].tolist()}
    for subject in ("UTS01", "UTS02"):
        index = read_index(str(out), subject)
        found[subject] = (index, [read_chunk(str(out), subject, c) for c in index.chunks])
    return found


def test_an_interrupted_import_keeps_the_voxel_chunks_it_finished(tmp_path, monkeypatch):
    """Interrupted while writing UTS02's second voxel chunk: the rerun writes only UTS02's last two
    chunks and stories.json, and the dataset equals an uninterrupted import's; a rerun of the
    finished import writes nothing; a rewritten response file rewrites its subject only."""
    from polymodal.models.fmri import data, importers

    root, _ = _huth_layout(tmp_path)
    import_huth(str(root), str(tmp_path / "whole"), chunk=4, progress=False)
    made, fail = [], [True]

    def counting(real):
        def make(uri, **kw):
            made.append("/".join(uri.split("/")[-2:]))
            if fail[0] and len(made) == 6:  # words, 3 chunks of UTS01, the first of UTS02, then this
                raise OSError("connection reset")
            return real(uri, **kw)
        return make

    monkeypatch.setattr(data, "ShardWriter", counting(data.ShardWriter))
    monkeypatch.setattr(importers, "ShardWriter", counting(importers.ShardWriter))
    out = tmp_path / "out"
    with pytest.raises(OSError, match="connection reset"):
        import_huth(str(root), str(out), chunk=4, progress=False)
    assert not (out / "stories.json").exists()
    fail[0] = False
    made.clear()
    import_huth(str(root), str(out), chunk=4, progress=False)
    assert made == ["UTS02/v000004-000008", "UTS02/v000008-000010"]
    whole = _everything(tmp_path / "whole")
    got = _everything(out)
    assert got["stories"] == whole["stories"] and got["words"] == whole["words"]
    for subject in ("UTS01", "UTS02"):
        assert got[subject][0] == whole[subject][0]
        for mine, ref in zip(got[subject][1], whole[subject][1], strict=True):
            assert mine.keys() == ref.keys()
            for story in ref:
                np.testing.assert_array_equal(mine[story], ref[story])
    made.clear()
    stamp = (out / "stories.json").stat().st_mtime_ns
    import_huth(str(root), str(out), chunk=4, progress=False)
    assert made == [] and (out / "stories.json").stat().st_mtime_ns == stamp  # finished: nothing to do
    hf5 = root / "preprocessed_data" / "UTS01" / "storyA.hf5"
    st = hf5.stat()
    os.utime(hf5, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten: another version
    import_huth(str(root), str(out), chunk=4, progress=False)
    assert made == ["UTS01/v000000-000004", "UTS01/v000004-000008", "UTS01/v000008-000010"]


def test_huth_layout_errors(tmp_path, s3_bucket_uri):
    root, _ = _huth_layout(tmp_path)
    with pytest.raises(PolymodalError, match="respdict.json not found"):
        import_huth(str(tmp_path), f"{s3_bucket_uri}/x", progress=False)
    with pytest.raises(PolymodalError, match="story 'ghost'"):
        import_huth(str(root), f"{s3_bucket_uri}/x", stories=["ghost"], progress=False)


def test_plain_layout_with_npy_and_bad_rows(tmp_path, s3_bucket_uri):
    base = tmp_path / "plain"
    (base / "responses" / "S1").mkdir(parents=True)
    (base / "stories.json").write_text(json.dumps({"s1": {"n_trs": 12, "tr": 1.5}}))
    np.save(base / "responses" / "S1" / "s1.npy", np.arange(36, dtype=np.float32).reshape(12, 3))
    (base / "words.csv").write_text("story,word,start,end\ns1,one,0.1,0.4\ns1,sp,0.4,0.6\ns1,two,0.6,0.9\n")
    out = f"{s3_bucket_uri}/plain"
    assert import_plain(str(base), out, chunk=2, progress=False)["words"] == 2
    np.testing.assert_array_equal(read_chunk(out, "S1", read_index(out, "S1").chunks[1])["s1"],
                                  np.arange(36, dtype=np.float32).reshape(12, 3)[:, 2:])
    # non-monotonic times name the story and the word
    (base / "words.csv").write_text("story,word,start,end\ns1,one,0.5,0.9\ns1,two,0.2,0.4\n")
    with pytest.raises(PolymodalError, match=r"story 's1', word 1 \('two'\)"):
        import_plain(str(base), out, progress=False)
    # a response file with the wrong TR count
    (base / "words.csv").write_text("story,word,start,end\ns1,one,0.1,0.4\n")
    np.save(base / "responses" / "S1" / "s1.npy", np.zeros((10, 3), np.float32))
    with pytest.raises(PolymodalError, match="s1.npy: subject 'S1', story 's1': 10 response rows, expected 12"):
        import_plain(str(base), out, progress=False)
    # ... which is right for responses that start 2 TRs into the 12-TR clock and stop 0 before its end
    (base / "stories.json").write_text(json.dumps({"s1": {"n_trs": 12, "tr": 1.5, "response_start": 2}}))
    import_plain(str(base), out, progress=False)
    assert json.loads(storage.read_text(f"{out}/stories.json"))["s1"] == {
        "n_trs": 12, "tr": 1.5, "start_time": 0.0, "response_start": 2, "response_end": 0}
    assert read_index(out, "S1").stories == {"s1": 10}


def test_cli_imports_the_plain_layout(tmp_path, s3_bucket_uri, capsys):
    from polymodal.cli import main

    base = tmp_path / "lab"
    (base / "responses" / "S1").mkdir(parents=True)
    (base / "stories.json").write_text(json.dumps({"s1": {"n_trs": 6, "tr": 2.0}}))
    np.save(base / "responses" / "S1" / "s1.npy", np.ones((6, 5), np.float32))
    (base / "words.csv").write_text("story,word,start,end\ns1,one,0.1,0.4\n")
    assert main(["data", "import", "--format", "fmri-plain", "--source", str(base), "--out",
                 f"{s3_bucket_uri}/lab", "--voxel-chunk", "2", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["subjects"] == ["S1"]
    assert len(read_index(f"{s3_bucket_uri}/lab", "S1").chunks) == 3
