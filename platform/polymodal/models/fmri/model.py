"""The fitted encoding model: one run's feature space and per-subject ridge weights as an
``nn.Module`` (buffers), and :func:`load_model`, which rebuilds it from a run folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .features import make_delayed, zscore
from .pipeline import Featurizer, Story


class EncodingModel(nn.Module):
    """Feature space + per-subject ridge weights (buffers) of one fitted run."""

    def __init__(self, featurizer: Featurizer, tr: float, weights: dict[str, np.ndarray],
                 test_r: dict[str, np.ndarray]):
        super().__init__()
        self.featurizer, self.tr = featurizer, tr
        self.subjects = sorted(weights)
        for s in self.subjects:
            self.register_buffer(f"coef_{s}", torch.from_numpy(np.ascontiguousarray(weights[s], np.float32)))
            self.register_buffer(f"r_{s}", torch.from_numpy(np.ascontiguousarray(test_r[s], np.float32)))

    def coef(self, subject: str) -> torch.Tensor:
        return getattr(self, f"coef_{subject}")            # (features * delays, voxels)

    def test_r(self, subject: str) -> torch.Tensor:
        return getattr(self, f"r_{subject}")               # (voxels,)

    def design(self, story: Story) -> torch.Tensor:
        """(n_trs, features * delays): z-scored and delayed like training, nothing trimmed."""
        m = self.featurizer.mcfg
        X = make_delayed(zscore(self.featurizer.on_trs(story)), m.delays)
        return torch.from_numpy(X.astype(np.float32))


def load_model(run_uri: str, opts: Any = None) -> tuple[Any, EncodingModel]:
    """(config, model) of a fitted run folder: weights from the chunk files, r from the evaluation."""
    from polymodal import storage
    from polymodal.config import read_yaml, validate_config

    from .distributed import load_solution
    from .pipeline import EXPORT_DIR, build_featurizer, load_subject_eval, read_export

    info, state = read_export(run_uri, opts)
    cfg_uri = storage.join(run_uri, EXPORT_DIR, "config.yaml")
    cfg = validate_config(read_yaml(cfg_uri, "config", opts), cfg_uri)
    featurizer = build_featurizer(cfg.model, vocab=state.get("vocab"), opts=opts)
    weights, test_r = {}, {}
    for subject in info["subjects"]:
        weights[subject] = load_solution(storage.join(run_uri, "subjects", subject, "ridge"), opts)["coef"]
        test_r[subject] = load_subject_eval(run_uri, subject, opts)["r"]
    return cfg, EncodingModel(featurizer, float(info["tr"]), weights, test_r).eval()
