"""polymodal: one Ray spine (config, storage, shards, train loop, eval, tune, serve)
for several multimodal research systems.

Systems live in ``polymodal.models.<system>`` and register their tasks with
:func:`polymodal.registry.register_task`.
"""

__version__ = "0.1.0"
