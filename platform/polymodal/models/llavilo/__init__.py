"""LLaViLo: video moment retrieval with a frozen LLaMA (Ma et al., 'LLaViLo: Boosting Video Moment
Retrieval via Adapter-Based Multimodal Modeling', ICCV-W 2023).

Modules: ``metrics`` (the official QVHighlights protocol), ``spans`` (span formats, temporal
(g)IoU, Hungarian matcher, set-prediction losses), ``injection`` (gated prefix injection into a
frozen LLaMA), ``data`` / ``importers`` / ``synth`` (shards), ``config`` / ``model`` / ``task``
(the ``llavilo.moment_retrieval`` task), ``inference``, ``serving``, ``commands``
(``eval qvhighlights``, ``data import --format qvhighlights | charades-sta``), ``demo``.
:func:`register` adds them; transformers loads lazily, on ``build_model`` / ``synth``.
"""


def register(registry) -> None:
    """Entry point ``polymodal.systems: llavilo``."""
    from polymodal.registry import ServeApp

    from . import commands, demo, task

    registry.add_task(task.MomentRetrievalTask())
    registry.add_eval_command(commands.QVHIGHLIGHTS)
    for command in commands.import_formats():
        registry.add_import_format(command)
    registry.add_demo_step(demo.STEP)
    registry.add_serve_app(ServeApp("llavilo", "llavilo.yaml", "serve.llavilo_app:app_builder"), __name__)
