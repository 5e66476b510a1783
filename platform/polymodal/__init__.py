"""polymodal: one Ray spine (config, storage, shards, train loop, eval, tune, serve)
for several multimodal research systems.

Systems are plug-ins: each is a package (the built-in five in ``polymodal.models.<system>``)
whose ``register(registry)`` function, named in the ``polymodal.systems`` entry-point group, adds
its tasks (:class:`polymodal.task.Task`), commands, demo step and Serve apps to
:mod:`polymodal.registry`.
"""

__version__ = "0.1.0"
