"""fMRI language encoding models (Huth-lab story listening): text features on the TR clock,
delays, and voxelwise ridge with per-voxel alphas chosen by cross-validation over stories.

Tasks: ``fmri.encoding`` (closed-form ridge; :mod:`.task`) and ``fmri.mlm`` (the masked-LM text
encoder; :mod:`.mlm`). :func:`register` adds them, the ``huth``, ``huth-pkl`` and ``fmri-plain`` import formats,
``data mlm``, the demo step and the Serve app.

Modules: ``config``, ``features`` (Lanczos resampling, trimming, z-scoring, delays),
``embeddings`` / ``encoders`` / ``mlm`` (feature spaces), ``ridge`` and ``distributed`` (voxelwise
ridge, chunk by chunk on Ray), ``pipeline`` (one run), ``model`` (the fitted ``EncodingModel`` and
``load_model``), ``metrics`` (per-voxel correlations and their summaries), ``data`` /
``importers`` / ``synth`` (voxel-chunked datasets), ``task``, ``serving``, ``report``,
``commands`` and ``demo``.
"""

from polymodal.models.fmri.features import lanczos_interp, make_delayed
from polymodal.models.fmri.ridge import RidgeCV

__all__ = ["RidgeCV", "lanczos_interp", "make_delayed", "register"]


def register(registry) -> None:
    """Entry point ``polymodal.systems: fmri``."""
    from polymodal.registry import ServeApp

    from . import commands, demo, mlm, task

    registry.add_task(task.EncodingTask())
    registry.add_task(mlm.MlmTask())
    registry.add_import_format(commands.HUTH)
    registry.add_import_format(commands.HUTH_PKL)
    registry.add_import_format(commands.PLAIN)
    registry.add_data_command(commands.MLM)
    registry.add_demo_step(demo.STEP)
    registry.add_serve_app(ServeApp("fmri", "fmri.yaml", "serve.fmri_app:app_builder"), __name__)
