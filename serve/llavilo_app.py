"""LLaViLo moment retrieval behind Ray Serve: ``import_path: serve.llavilo_app:app_builder``.

The spine's builder does the work (strict args, auth, limits, batching, 4xx on bad input); the
task comes from the run's own config. A request is one query with its video (features, or a
`vid` of the server's index), the response its ranked windows (polymodal.models.llavilo.serving).
"""

from polymodal.serving.app import app_builder

__all__ = ["app_builder"]
