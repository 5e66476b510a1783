"""Serving hooks for ChefFusion: images in, recipes out; recipes in, PNGs out; text in, text and image out.

A request is ONE generation; which one follows from the fields (or ``mode``)::

    {"image": "<base64 JPEG/PNG>"}                     -> i2t: a recipe for the dish
    {"image": "...", "text": "a quick version"}         -> it2t
    {"recipe": "tomato soup. ingredients: ..."}         -> t2i: a PNG of the dish
    {"text": "tomato soup"}                             -> t2ti: text, and an image if the LM asks for one
    {"text": "...", "mode": "t2t"}                      -> text only
    + optional "seed", "steps", "guidance", "max_new_tokens"

The response interleaves the outputs: ``{"mode", "text", "images": [base64 PNG], "items":
[{"type": "text", "text"} | {"type": "image", "png_base64"}], "img_tokens"}``. With
``Accept: image/png`` the spine answers the first image as raw PNG bytes (:func:`media`); uploads
may also come as multipart form data (``POST /v1/predict/upload``, file field ``image``).

Bad input is a 422 naming the field: undecodable base64 or image, an image over
:data:`MAX_PIXELS`, an empty recipe or text, a mode without the inputs it needs.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from polymodal.errors import ServeInputError

from .model import MODES

#: largest decoded image a request may carry (width x height)
MAX_PIXELS = 4096 * 4096
MAX_TEXT = 8000


#: mode -> (required fields, "a|b" = either; fields it accepts)
_MODE_FIELDS = {"i2t": (("image",), ("image",)), "it2t": (("image", "text"), ("image", "text")),
                "t2i": (("recipe|text",), ("recipe", "text")), "t2ti": (("text",), ("text",)),
                "t2t": (("text",), ("text",))}


class ChefRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["t2t", "i2t", "t2i", "it2t", "t2ti"] | None = Field(
        None, description="default: i2t for an image, it2t for image + text, t2i for a recipe, t2ti for text")
    image: str | None = Field(None, min_length=1, description="base64 JPEG/PNG (a data: URL prefix is accepted)")
    recipe: str | None = Field(None, max_length=MAX_TEXT, description="a recipe to draw (t2i)")
    text: str | None = Field(None, max_length=MAX_TEXT, description="a prompt (t2t, it2t, t2ti)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="diffusion noise seed")
    steps: int | None = Field(None, ge=1, le=200, description="diffusion steps (default: the model's)")
    guidance: float | None = Field(None, ge=0.0, le=30.0, description="classifier-free guidance (<= 1: off)")
    max_new_tokens: int | None = Field(None, ge=1, le=512, description="text tokens (default: the model's)")

    @field_validator("recipe", "text")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty")
        return value

    @model_validator(mode="after")
    def _resolve_mode(self) -> "ChefRequest":
        if self.recipe is not None and self.text is not None:
            raise ValueError("give `recipe` (to draw it) or `text` (a prompt), not both")
        if self.mode is None:
            if self.image is not None:
                self.mode = "it2t" if self.text is not None else "i2t"
            elif self.recipe is not None:
                self.mode = "t2i"
            elif self.text is not None:
                self.mode = "t2ti"
            else:
                raise ValueError("send an `image`, a `recipe` or a `text`")
        needs, takes = _MODE_FIELDS[self.mode]
        for need in needs:
            if all(getattr(self, f) is None for f in need.split("|")):
                raise ValueError(f"mode {self.mode} needs `{need.replace('|', '` or `')}`")
        for name in ("image", "recipe", "text"):
            if getattr(self, name) is not None and name not in takes:
                raise ValueError(f"mode {self.mode} takes no `{name}` (it takes {', '.join(takes)})")
        return self

    def prompt(self) -> str | None:
        return self.recipe if self.recipe is not None else self.text


class OutputItem(BaseModel):
    type: Literal["text", "image"]
    text: str | None = None
    png_base64: str | None = None


class ChefResponse(BaseModel):
    mode: str
    text: str = Field(..., description="all text the model wrote")
    images: list[str] = Field(default_factory=list, description="generated images, base64 PNG")
    items: list[OutputItem] = Field(default_factory=list, description="text and images in the order produced")
    img_tokens: bool = Field(False, description="the LM produced (or was given) the [IMG] tokens")


def decode_request_image(data: str) -> Any:
    """base64 (or ``data:image/...;base64,``) -> RGB PIL image; ServeInputError('image', ...) otherwise."""
    from PIL import Image

    from .backbones import decode_image

    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServeInputError("image", "is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            size = probe.size
    except Exception:  # noqa: BLE001 -- any decoder failure is the client's bad image
        raise ServeInputError("image", "is not a decodable image (JPEG, PNG, ...)") from None
    if size[0] * size[1] > MAX_PIXELS:
        raise ServeInputError("image", f"is {size[0]}x{size[1]} pixels; the limit is {MAX_PIXELS} pixels")
    try:
        return decode_image(raw)
    except ValueError as exc:
        raise ServeInputError("image", str(exc).partition(": ")[2] or "is not a decodable image") from None


def _response(gen) -> ChefResponse:
    from .backbones import image_to_png

    items, images = [], []
    for item in gen.items:
        if isinstance(item, str):
            items.append(OutputItem(type="text", text=item))
        else:
            png = base64.b64encode(image_to_png(item)).decode()
            images.append(png)
            items.append(OutputItem(type="image", png_base64=png))
    return ChefResponse(mode=gen.mode, text=gen.text, images=images, items=items, img_tokens=gen.img_tokens)


def serve_predict(model: nn.Module, requests: list[ChefRequest]) -> list[ChefResponse]:
    """Batched: requests with the same mode and generation options run as one ``generate`` call
    (one LM pass, one diffusion batch); each keeps its own seed, so its output does not depend
    on the batch."""
    images = [decode_request_image(r.image) if r.image is not None else None for r in requests]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.mode, r.steps, r.guidance, r.max_new_tokens), []).append(i)
    out: list[Any] = [None] * len(requests)
    for (mode, steps, guidance, max_new), idx in groups.items():
        if mode not in MODES:  # pragma: no cover -- the request model allows only these
            raise ServeInputError("mode", f"must be one of {MODES}")
        texts = [requests[i].prompt() for i in idx]
        gens = model.generate(mode, texts=texts if any(t is not None for t in texts) else None,
                              images=[images[i] for i in idx] if mode in ("i2t", "it2t") else None,
                              seeds=[requests[i].seed for i in idx], steps=steps, guidance=guidance,
                              max_new_tokens=max_new)
        for i, g in zip(idx, gens):
            out[i] = _response(g)
    return out


def media(response: ChefResponse) -> tuple[bytes, str] | None:
    """The first generated image as PNG bytes (for ``Accept: image/png``), or None."""
    if not response.images:
        return None
    return base64.b64decode(response.images[0]), "image/png"
