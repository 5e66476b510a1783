"""VIOLET behind Ray Serve: ``import_path: serve.violet_app:app_builder``.

The spine's builder does the work (strict args, auth, limits, batching, 4xx on bad input); the
task comes from the run's own config (polymodal.models.violet.serving). A retrieval (or
pre-training) checkpoint ranks the videos of the server's `index` for a text; an oeqa or mcqa
checkpoint answers a question about a video of the index (`vid`), an uploaded video file
(`video_b64`, or multipart at /v1/predict/upload) or frames (`frames_b64`).
"""

from polymodal.serving.app import app_builder

__all__ = ["app_builder"]
