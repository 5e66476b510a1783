"""LLaViLo: video moment retrieval with a frozen LLaMA (Ma et al., 'LLaViLo: Boosting Video Moment
Retrieval via Adapter-Based Multimodal Modeling', ICCV-W 2023).

Modules: ``qvh_eval`` (the official QVHighlights protocol), ``spans`` (span formats, temporal
(g)IoU, Hungarian matcher, set-prediction losses), ``injection`` (gated prefix injection into a
frozen LLaMA), ``data`` / ``importers`` / ``synth`` (shards), ``config`` / ``model`` / ``task``
(the ``llavilo.moment_retrieval`` task). Importing the package registers the task; transformers
loads lazily, on ``build_model`` / ``synth``.
"""

from . import task  # noqa: F401  (registers llavilo.moment_retrieval)
