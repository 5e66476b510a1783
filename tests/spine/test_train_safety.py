"""Resuming never runs pickled code and never writes outside the restore folder (issue 8).

The resume paths themselves (ZeRO-3 through Ray Train, a killed run) are in tests/spine/test_train.py;
they load DeepSpeed's state under :func:`~polymodal.train.loop.weights_only_loads`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.train.loop import _check_checkpoint_keys, weights_only_loads


class _Planted:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_weights_only_loads_refuses_pickled_code_even_when_asked_not_to(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "optim_states.pt"
    with open(path, "wb") as f:
        pickle.dump({"state": torch.zeros(2), "payload": _Planted(str(marker))}, f)
    with weights_only_loads():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=False)  # what DeepSpeed 0.19 passes
    assert not marker.exists()
    # tensors and plain containers still load, and the switch is gone afterwards
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
    with weights_only_loads():
        assert torch.equal(torch.load(tmp_path / "ok.pt", weights_only=False)["w"], torch.ones(3))
    import os

    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


@dataclass
class _Info:
    path: str


class _Listing:
    def __init__(self, paths):
        self.paths = paths

    def get_file_info(self, selector):
        return [_Info(p) for p in self.paths]


def test_restore_refuses_object_keys_that_leave_the_checkpoint():
    root = "bucket/runs/x/checkpoint_000001"
    _check_checkpoint_keys(_Listing([f"{root}/state.json", f"{root}/deepspeed/latest", f"{root}/a..b"]), root)
    with pytest.raises(PolymodalError, match=r"\.\./\.\./escaped"):
        _check_checkpoint_keys(_Listing([f"{root}/state.json", f"{root}/../../escaped.txt"]), root)
