"""ChefFusion: recipes from food images and food images from recipes (Li et al., 'ChefFusion:
Multimodal Foundation Model Integrating Recipe and Food Image Generation', CIKM 2024, on GILL).

Modules: ``config`` (the model section and presets), ``backbones`` (the frozen LM, CLIP and
Stable Diffusion; tiny random ones for tests), ``model`` (W_recipe, [IMG] tokens, the mapper
f_w, losses and ``generate``), ``data`` / ``importers`` / ``synth`` / ``features`` (raw and
feature shards), ``metrics``, ``task`` (the ``cheffusion.recipes`` task), ``serving``,
``commands`` (``data import --format recipe1m``, ``data features``) and ``demo``. :func:`register`
adds them; transformers and diffusers load lazily.
"""


def register(registry) -> None:
    """Entry point ``polymodal.systems: cheffusion``."""
    from polymodal.registry import ServeApp

    from . import commands, demo, task

    registry.add_task(task.RecipeTask())
    registry.add_import_format(commands.RECIPE1M)
    registry.add_data_command(commands.FEATURES)
    registry.add_demo_step(demo.STEP)
    registry.add_serve_app(ServeApp("cheffusion", "cheffusion.yaml", "serve.cheffusion_app:app_builder"), __name__)
