"""ChefFusion behind Ray Serve: ``import_path: serve.cheffusion_app:app_builder``.

The spine's builder does the work (strict args, auth, body limit, batching, 4xx on bad input);
the task comes from the run's own config. Requests (polymodal.models.cheffusion.serving): an
image (base64 JSON, or multipart at /v1/predict/upload) -> a recipe; a recipe -> a PNG (send
``Accept: image/png`` for the raw bytes); a text -> text and an image (t2ti).
"""

from polymodal.serving.app import app_builder

__all__ = ["app_builder"]
