"""ChefFusion: recipes from food images and food images from recipes (Li et al., 'ChefFusion:
Multimodal Foundation Model Integrating Recipe and Food Image Generation', CIKM 2024, on GILL).

Modules: ``config`` (the model section and presets), ``backbones`` (the frozen LM, CLIP and
Stable Diffusion; tiny random ones for tests), ``model`` (W_recipe, [IMG] tokens, the mapper
f_w, losses and ``generate``), ``data`` / ``importers`` / ``synth`` / ``features`` (raw and
feature shards), ``metrics``, ``task`` (the ``cheffusion.recipes`` task) and ``serving``.
Importing the package registers the task; transformers and diffusers load lazily.
"""
from . import task  # noqa: F401,E402  (registers cheffusion.recipes)
