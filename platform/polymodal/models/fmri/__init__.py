"""fMRI language encoding models (Huth-lab story listening): text features on the TR clock,
delays, and voxelwise ridge with per-voxel alphas chosen by cross-validation over stories."""

from polymodal.models.fmri.features import lanczos_interp, make_delayed
from polymodal.models.fmri.ridge import RidgeCV

# importing the task modules registers fmri.encoding and fmri.mlm
from polymodal.models.fmri import mlm, task  # noqa: E402,F401

__all__ = ["RidgeCV", "lanczos_interp", "make_delayed"]
