"""polymodal.imports: the key of an import and the progress of an interrupted one."""

from __future__ import annotations

import os

import numpy as np

from polymodal.imports import PROGRESS_NAME, ImportProgress, import_key
from polymodal.shards import ShardWriter

COLUMNS = {"x": {"dtype": "int64"}}


def test_import_key_follows_sources_and_settings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    key = import_key([str(src)], {"n": 1})
    assert key == import_key([str(src)], {"n": 1}) != import_key([str(src)], {"n": 2})
    (src / "b.txt").write_text("two")  # a folder is fingerprinted with every file below it
    assert import_key([str(src)], {"n": 1}) != key
    key = import_key([str(src)], {"n": 1})
    stat = (src / "a.txt").stat()
    os.utime(src / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    assert import_key([str(src)], {"n": 1}) != key


def test_progress_saves_resumes_finishes_and_clears(tmp_path):
    out = str(tmp_path / "ds")
    progress = ImportProgress(out, "k1")
    assert progress.finished() is None and progress.resumed().records == 0
    with ShardWriter(out, task="t", split="train", columns=COLUMNS, meta={"import_key": "k1"},
                     progress=False) as writer:
        writer.write({"x": np.arange(3)})
        writer.flush()
        progress.save(3, writer.shards, skipped=1)
        state = ImportProgress(out, "k1").resumed()
        assert (state.records, state.shards, state.counters) == (3, writer.shards, {"skipped": 1})
        assert ImportProgress(out, "k2").resumed().records == 0  # another import's progress
        assert ImportProgress(out, "k1", resume=False).resumed().records == 0  # --restart
        (tmp_path / "ds" / "part-00000.parquet").rename(tmp_path / "gone")
        assert ImportProgress(out, "k1").resumed().records == 0  # a shard is gone: start over
        (tmp_path / "gone").rename(tmp_path / "ds" / "part-00000.parquet")
        assert progress.finished() is None  # no manifest yet
    progress.clear()
    assert not (tmp_path / "ds" / PROGRESS_NAME).exists()
    assert progress.finished().num_rows == 3
    assert ImportProgress(out, "k2").finished() is None and ImportProgress(out, "k1", resume=False).finished() is None
