"""ChefFusion behind Ray Serve: a recipe gives a valid PNG and an image gives a recipe over real
HTTP (JSON and multipart); undecodable, oversized or empty input is a 4xx with its reason."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from support import cheffusion_config, served
from PIL import Image

from polymodal import shards
from polymodal.errors import ServeInputError
from polymodal.serving.app import ModelStore, parse_args
from polymodal.serving.config_check import check_serve_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RECIPE = "tomato soup. ingredients: tomato, water, salt, onion. instructions: chop the tomato."


@pytest.fixture(scope="module")
def trained(cheffusion_data, s3_server):
    """A briefly trained run (no Ray) on the session's synthetic dishes, and two test images."""
    import uuid

    from polymodal.train.loop import fit_local

    cfg = cheffusion_config(cheffusion_data, f"s3://polymodal/test-cf-serve-{uuid.uuid4().hex}", "serve",
                            "data.val=null", "optim.epochs=1", "optim.max_steps_per_epoch=3", "deepspeed.zero_stage=0")
    fit_local(cfg, progress=False)
    batch = next(shards.iter_local_batches(cheffusion_data["test"], 2, shuffle=False, opts=cfg.storage))
    return {"run": cfg.run_uri, "images": [bytes(b) for b in batch["image"]]}


@pytest.fixture(scope="module")
def store(trained):
    return ModelStore(parse_args({"checkpoint": trained["run"]}))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_requests_pick_their_mode_and_bad_ones_name_the_field(store, trained):
    req = store.request_model
    assert req(image=_b64(trained["images"][0])).mode == "i2t"
    assert req(image=_b64(trained["images"][0]), text="quick").mode == "it2t"
    assert req(recipe=RECIPE).mode == "t2i"
    assert req(text="tomato soup").mode == "t2ti"
    for bad, reason in [({}, "send an `image`"), ({"recipe": "   "}, "is empty"), ({"text": ""}, "is empty"),
                        ({"recipe": RECIPE, "text": "x"}, "not both"), ({"mode": "i2t", "text": "x"}, "needs `image`"),
                        ({"recipe": RECIPE, "image": "aGk="}, "takes no `recipe`"), ({"mode": "t2i", "recipe": RECIPE, "image": "aGk="}, "takes no `image`"), ({"recipe": RECIPE, "steps": 0}, "steps")]:
        with pytest.raises(ValueError, match=reason):
            req(**bad)
    for data, reason in [("not base64!!", "not valid base64"), (_b64(b"plain text, no image"), "not a decodable image")]:
        with pytest.raises(ServeInputError, match=reason) as info:
            store.task.serve_predict(store.base.model, [req(image=data)])
        assert info.value.field == "image"


def test_in_process_batch_equals_one_by_one(store, trained):
    req = store.request_model
    reqs = [req(recipe=RECIPE, seed=1, steps=2), req(image=_b64(trained["images"][1])),
            req(recipe=RECIPE + " season with salt.", seed=2, steps=2)]
    batched = store.task.serve_predict(store.base.model, reqs)
    alone = [store.task.serve_predict(store.base.model, [r])[0] for r in reqs]
    assert [b.mode for b in batched] == ["t2i", "i2t", "t2i"]
    assert batched[1].text == alone[1].text and batched[1].text
    for i in (0, 2):
        a = np.asarray(Image.open(io.BytesIO(base64.b64decode(batched[i].images[0]))), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(base64.b64decode(alone[i].images[0]))), dtype=int)
        assert np.abs(a - b).max() <= 1


def test_serve_config_is_valid():
    assert check_serve_config(str(ROOT / "serve" / "cheffusion.yaml")) == []


def test_png_and_recipe_over_http_and_bad_uploads_are_4xx(ray_cluster, trained):
    args = parse_args({"checkpoint": trained["run"], "max_body_bytes": 200_000, "max_batch_size": 4})
    image = trained["images"][0]
    with served(args, "cheffusion") as url, httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/v1/predict", json={"recipe": RECIPE, "steps": 2}, headers={"accept": "image/png"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png" and r.content.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(r.content)).size == (32, 32)

        r = client.post("/v1/predict", json={"recipe": RECIPE, "steps": 2})
        body = r.json()
        assert r.status_code == 200 and body["mode"] == "t2i" and body["img_tokens"]
        assert base64.b64decode(body["images"][0]).startswith(PNG_SIGNATURE)

        r = client.post("/v1/predict", json={"image": _b64(image)})
        assert r.status_code == 200, r.text
        recipe = r.json()
        assert recipe["mode"] == "i2t" and isinstance(recipe["text"], str) and recipe["text"]
        r = client.post("/v1/predict/upload", files={"image": ("dish.png", image, "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["text"] == recipe["text"]  # multipart and base64 JSON: the same request

        r = client.post("/v1/predict", json={"text": "tomato soup", "steps": 2})
        assert r.status_code == 200 and r.json()["mode"] == "t2ti"

        bad = [
            (client.post("/v1/predict", json={"image": _b64(b"GIF89a broken")}), 422, "image"),
            (client.post("/v1/predict", json={"image": "%%%"}), 422, "base64"),
            (client.post("/v1/predict", json={"recipe": "  "}), 422, "recipe"),
            (client.post("/v1/predict/upload", files={"image": ("x.jpg", b"\xff\xd8 not really", "image/jpeg")}),
             422, "image"),
            (client.post("/v1/predict/upload", files={"image": ("big.png", b"\0" * 300_000, "image/png")}),
             413, "limit"),
            (client.post("/v1/predict", json={"image": _b64(b"\0" * 200_000)}), 413, "limit"),
            (client.post("/v1/predict/upload", json={"recipe": RECIPE}), 415, "multipart"),
            (client.post("/v1/predict", json={"image": _b64(image)}, headers={"accept": "image/png"}), 406, "image/png"),
            (client.post("/v1/predict/upload", files={"recipe": (None, "")}), 422, "recipe"),
        ]
        for resp, status, word in bad:
            assert resp.status_code == status, (status, resp.text)
            assert word in resp.json()["detail"]
        assert client.get("/healthz").status_code == 200  # and the replica is still up
