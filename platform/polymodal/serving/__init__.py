"""Serving with Ray Serve: :mod:`polymodal.serving.app` (the deployment and its HTTP API) and
:mod:`polymodal.serving.config_check` (strict checks of a ``serve deploy`` config; ``polymodal serve check``)."""
