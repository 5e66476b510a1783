"""The Serve app under fuzzing: whatever a client sends, the answer is 2xx or a 4xx whose JSON
``detail`` says what is wrong, never a 5xx or a crash, the body limit holds for declared and
chunked bodies, and the server answers a good request afterwards.

The app is the deployment's own (:func:`polymodal.serving.app.build_api`), built in-process by
:func:`~polymodal.serving.app.local_app` from untrained exports of the shipped tiny configs, and
driven through raw ASGI calls (any header bytes, any body chunking; no HTTP client tidies them
up), so hypothesis runs hundreds of requests in seconds. Three systems: Wander (token, adapter,
body limit), LLaViLo (features or an indexed ``vid``) and VIOLET multiple-choice QA (base64
videos and images, options echoed back). schemathesis then fuzzes each app from its own
``/openapi.json``. One run goes over real HTTP through Ray Serve. Every registered task, these
three included, is also fuzzed from its own example request in ``test_every_task.py``; the client,
the check and the generic strategies are in ``tests/fuzzing.py``.

Every test runs a small derandomized budget in ``make test`` and a large one under the
``faults`` marker (``make test-faults``).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from fuzzing import (EDGES, PREDICT, UPLOAD, Client, Reply, budget, check, encoded, fuzz, fuzz_json_bodies,
                     json_values, mostly, mutated, numbers, texts)
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel
from support import served, untrained_export, wander_request

from polymodal.registry import get_task
from polymodal.serving.app import MODEL_HEADER, local_app, parse_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning",
                                        "ignore::DeprecationWarning", "ignore::RuntimeWarning")
TOKEN_ENV = "POLYMODAL_FUZZ_TOKEN"
TOKEN = "fuzz-" + uuid.uuid4().hex
LIMIT = 48_000  # max_body_bytes of the fuzzed apps: big enough for one VIOLET video, small enough to cross



# ----------------------------------------------------------------------------- the apps


def data_overrides(data: dict[str, str], **backbones: str) -> list[str]:
    return [f"data.{s}={data[s]}" for s in ("train", "val", "test")] + [
        f"model.{key}={data[name]}" for key, name in backbones.items()]


@dataclass
class Target:
    """One served app and what a fuzzer needs to know about it."""

    client: Client
    args: dict[str, Any]          # serve args it was built from (for the HTTP run)
    response: type[BaseModel]
    valid: dict[str, Any]         # a request that must succeed
    bodies: st.SearchStrategy     # request bodies, mostly sound
    uploads: st.SearchStrategy    # (content type, multipart body)
    auth: tuple[tuple[bytes, bytes], ...] = ()
    media: dict[str, bytes] = dataclasses.field(default_factory=dict)  # real files the strategies damage


@pytest.fixture(scope="module")
def wander(tmp_path_factory) -> Target:
    """Wander classification with a token, a houlsby adapter and a small body limit."""
    from polymodal.models.wander.serving import ClassificationResponse

    root = tmp_path_factory.mktemp("fuzz-wander")
    data = get_task("wander.classification").synth(str(root / "data"), seed=0, scale=0.05, progress=False)
    uris = data_overrides(data, backbone="backbone")
    adapter, _ = untrained_export(root / "adapter", "wander_tiny.yaml", *uris, "model.method=houlsby", seed=1)
    args = {"checkpoint": untrained_export(root / "base", "wander_tiny.yaml", *uris)[0], "adapters": {"houlsby": adapter},
            "token_env": TOKEN_ENV, "max_body_bytes": LIMIT}
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_ENV, TOKEN)
        client = Client(local_app(args))
    valid = wander_request(data["backbone"])
    yield Target(client, args, ClassificationResponse, valid, wander_bodies(valid), uploads(["inputs"]),
                 ((b"authorization", f"Bearer {TOKEN}".encode()),))
    client.close()


@pytest.fixture(scope="module")
def llavilo(tmp_path_factory) -> Target:
    """LLaViLo moment retrieval with a video index (requests by features or by ``vid``)."""
    from polymodal.models.llavilo.serving import MomentResponse, open_index

    root = tmp_path_factory.mktemp("fuzz-llavilo")
    data = get_task("llavilo.moment_retrieval").synth(str(root / "data"), seed=0, scale=0.05, progress=False)
    ckpt, cfg = untrained_export(root / "ckpt", "llavilo_tiny.yaml", *data_overrides(data, llm="llm"))
    args = {"checkpoint": ckpt, "index": data["test"], "max_body_bytes": LIMIT}
    client = Client(local_app(args))
    text, video = (3, cfg.model.text_dim), (6, cfg.model.video_dim)
    valid = {"query": "a man opens the fridge", "text": np.full(text, 0.1).tolist(),
             "video": np.full(video, 0.05).tolist(), "duration": 12.0, "top_k": 3}
    vids = sorted(open_index(data["test"]).video)[:8]
    yield Target(client, args, MomentResponse, valid, llavilo_bodies(text, video, vids),
                 uploads(["query", "text", "video", "duration", "vid", "top_k"]))
    client.close()


@pytest.fixture(scope="module")
def violet(tmp_path_factory) -> Target:
    """VIOLET multiple-choice QA over a QA index: ``vid``, ``video_b64`` or ``frames_b64``, and options."""
    from polymodal.models.violet.serving import QAResponse, open_index

    root = tmp_path_factory.mktemp("fuzz-violet")
    data = get_task("violet.oeqa").synth(str(root / "data"), seed=1, scale=1 / 64, progress=False)
    ckpt, _ = untrained_export(root / "ckpt", "violet_tiny_qa.yaml", *data_overrides(data, bert="bert"), "task=violet.mcqa",
                     "model.num_answers=null")
    args = {"checkpoint": ckpt, "index": data["test"], "max_body_bytes": LIMIT}
    client = Client(local_app(args))
    index = open_index(data["test"])
    media = media_samples(index.frames[index.ids[0]])
    valid = {"question": "which way does the red disc move?", "vid": index.ids[0], "options": ["left", "right"]}
    fields = ["question", "vid", "video_b64", "frames_b64", "options", "top_k"]
    yield Target(client, args, QAResponse, valid, violet_bodies(index.ids, media), uploads(fields, raw_media(media)),
                 media=media)
    client.close()


def media_samples(frames: np.ndarray) -> dict[str, bytes]:
    """A PNG, a JPEG, an MP4 and a lossless MOV (PNG frames) of real frames (T, H, W, 3) uint8."""
    from PIL import Image

    from polymodal.models.violet.video import encode_video

    out = {}
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(frames[0]).save(buf, format=fmt)
        out[fmt.lower()] = buf.getvalue()
    out["mp4"] = encode_video(frames)
    out["mov"] = encode_video(frames, codec="png", pix_fmt="rgb24", container="mov")
    return out


# ----------------------------------------------------------------------------- strategies


def matrices(rows: int, width: int) -> st.SearchStrategy[list[list[float]]]:
    """rows x width lists of normal values with a few edge values planted; sometimes a row short
    or long, or one row ragged. Values come from a drawn seed: drawing each float would spend the
    budget on generation rather than requests."""
    def build(shape: tuple[int, int], seed: int, planted: list[tuple[int, int, float]], ragged: int) -> list:
        out = np.random.default_rng(seed).normal(size=shape).round(3).tolist()
        for i, j, value in planted:
            if out and out[0]:
                out[i % len(out)][j % shape[1]] = value
        if ragged and out:
            row = out[ragged % len(out)]
            out[ragged % len(out)] = row[:-1] if ragged % 2 else [*row, 0.5]
        return out

    near = st.tuples(st.sampled_from(sorted({0, 1, max(rows - 1, 0), rows, rows + 1})),
                     st.sampled_from(sorted({0, width - 1, width, width + 1})))
    planted = st.lists(st.tuples(st.integers(0, 999), st.integers(0, 999), st.sampled_from(EDGES)), min_size=1,
                       max_size=3)
    return st.builds(build, mostly(st.just((rows, width)), near), st.integers(0, 2 ** 16),
                     mostly(st.just([]), planted), mostly(st.just(0), st.sampled_from([1, 2, 7])))


def wander_bodies(valid: dict) -> st.SearchStrategy[dict]:
    inputs = valid["inputs"]
    mods = {name: matrices(len(rows), len(rows[0])) for name, rows in inputs.items()}
    return st.fixed_dictionaries({"inputs": st.fixed_dictionaries(mods)})


def llavilo_bodies(text: tuple[int, int], video: tuple[int, int], vids: list[str]) -> st.SearchStrategy[dict]:
    """By features (``video`` + ``duration``) or by an indexed ``vid``; values mostly sensible."""
    common = {"query": mostly(st.sampled_from(["a man opens the fridge", "x"]), texts), "text": matrices(*text),
              "top_k": mostly(st.integers(1, 8), st.integers(-2, 200) | numbers)}
    by_features = st.fixed_dictionaries({**common, "video": matrices(*video),
                                         "duration": mostly(st.floats(0.5, 300), numbers)})
    return by_features | st.fixed_dictionaries({**common, "vid": mostly(st.sampled_from(vids), texts)})


def raw_media(media: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    """Real media (PNG, JPEG, MP4, MOV), sometimes cut short or with a few bytes changed, or junk bytes."""
    def damage(kind: str, cut: int, flips: list[tuple[int, int]]) -> bytes:
        data = media[kind]
        out = bytearray(data[:max(1, len(data) - cut)] if cut else data)
        for pos, value in flips:
            out[pos % len(out)] = value
        return bytes(out)

    flips = st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=3)
    real = st.builds(damage, st.sampled_from(sorted(media)),
                     st.just(0) | st.sampled_from([1, 16, 200]) | st.integers(0, 5000), st.just([]) | flips)
    return st.one_of(real, real, st.binary(max_size=64))


def b64_media(media: dict[str, bytes]) -> st.SearchStrategy[str]:
    """base64 of :func:`raw_media` as sent (plain, data: URL, wrapped lines, one character short), or not base64."""
    b64 = raw_media(media).map(lambda b: base64.b64encode(b).decode())
    return st.one_of(b64, b64.map(lambda s: "data:video/mp4;base64," + s), b64.map(lambda s: s[:-1]),
                     b64.map(lambda s: "\n".join(s[i:i + 76] for i in range(0, len(s), 76))),
                     st.sampled_from(["", "=", "%%%", "AAAA", "\u00e9t\u00e9"]))


def violet_bodies(vids: list[str], media: dict[str, bytes]) -> st.SearchStrategy[dict]:
    """A question, mostly one of the three video fields, options mostly 2 or 3 plausible ones."""
    known, b64 = st.sampled_from(vids), b64_media(media)
    video = st.one_of(st.fixed_dictionaries({"vid": mostly(known, texts)}),
                      st.fixed_dictionaries({"video_b64": b64}),
                      st.fixed_dictionaries({"frames_b64": st.lists(b64, min_size=1, max_size=5)}),
                      st.fixed_dictionaries({}, optional={"vid": known, "video_b64": b64,
                                                          "frames_b64": st.lists(b64, max_size=2)}))
    options = mostly(st.lists(st.sampled_from(["left", "right", "up"]), min_size=2, max_size=3),
                     st.lists(texts, max_size=6))
    common = st.fixed_dictionaries({"question": mostly(st.just("which way?"), texts), "options": options},
                                   optional={"top_k": mostly(st.integers(1, 3), st.integers(-2, 200) | numbers)})
    return st.builds(lambda c, v: {**c, **v}, common, video)


def header_values(*likely: bytes) -> st.SearchStrategy[bytes | None]:
    """None (header absent), a likely value, or arbitrary bytes."""
    return st.one_of(st.none(), st.sampled_from(likely), st.binary(max_size=40))


def request_headers(auth: tuple[tuple[bytes, bytes], ...]) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """Content-Type, Accept, the model header and Authorization, each absent, plausible or junk."""
    token = auth[0][1] if auth else b"Bearer x"
    values = st.fixed_dictionaries({
        b"content-type": header_values(b"application/json", b"application/json; charset=utf-8", b"text/plain",
                                       b"multipart/form-data", b"application/x-www-form-urlencoded", b""),
        b"accept": header_values(b"application/json", b"*/*", b"image/png", b"text/html",
                                 b"image/png, application/json;q=0.1", b"video/*"),
        MODEL_HEADER.encode(): header_values(b"default", b"houlsby", b"nope", b"", b"../x"),
        b"authorization": header_values(token, token + b" ", token.lower(), b"Bearer wrong", b"Basic " + token,
                                        token[:-1]),
    })
    return values.map(lambda d: [(k, v) for k, v in d.items() if v is not None])


# ----------------------------------------------------------------------------- JSON bodies


SYSTEMS = ["wander", "llavilo", "violet"]


@budget(40, 1000)
@pytest.mark.parametrize("name", SYSTEMS)
def test_json_bodies_get_2xx_or_a_4xx_reason(request, name, n):
    """Bodies of the system's request with a key dropped, added or retyped, edge values planted,
    encoded oddly or not JSON at all; then a good request is still served."""
    target: Target = request.getfixturevalue(name)
    fuzz_json_bodies(target.client, target.valid, target.response, n, target.bodies, target.auth)


@budget(40, 1000)
def test_any_headers_get_2xx_or_a_4xx_reason(wander, n):
    """Token, content type, Accept and adapter id in any combination on a valid body: the status
    follows from the headers alone, and no reply leaks the token."""
    body = json.dumps(wander.valid).encode()
    good = wander.auth[0][1]

    @fuzz(n)
    @given(headers=request_headers(wander.auth))
    def one(headers: list[tuple[bytes, bytes]]) -> None:
        reply = wander.client.request("POST", PREDICT, headers, [body])
        check(reply, wander.response, headers)
        assert TOKEN.encode() not in reply.body
        sent = dict(headers)
        authorized = (sent.get(b"authorization", b"").partition(b" ")[0].lower() == b"bearer"
                      and sent[b"authorization"].partition(b" ")[2].strip() == good.partition(b" ")[2])
        if not authorized:
            assert reply.status == 401 and reply.headers["www-authenticate"] == "Bearer", headers
        elif sent.get(MODEL_HEADER.encode(), b"default") not in (b"", b"default", b"houlsby"):
            assert reply.status in (404, 422), headers  # 422 first when the content type is not JSON

    one()


# ----------------------------------------------------------------------------- multipart uploads


def multipart(parts: list[tuple[bytes, bytes | None, bytes | None, bytes]], boundary: bytes) -> bytes:
    """A multipart/form-data body: (name, filename, content type, data) per part."""
    out = []
    for name, filename, ctype, data in parts:
        disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename else b"")
        head = b"Content-Disposition: " + disposition + b"\r\n"
        head += b"Content-Type: " + ctype + b"\r\n" if ctype else b""
        out.append(b"--" + boundary + b"\r\n" + head + b"\r\n" + data + b"\r\n")
    return b"".join(out) + b"--" + boundary + b"--\r\n"


def uploads(fields: list[str], files: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy[tuple]:
    """(content type, body): parts named after the request's fields or anything, text or file data,
    sometimes truncated or announced with another boundary."""
    names = st.sampled_from([f.encode() for f in fields]) | st.binary(max_size=8).filter(lambda b: b'"' not in b)
    file_data = files if files is not None else st.binary(max_size=64)
    part = st.tuples(names, st.none() | st.sampled_from([b"clip.mp4", b"a.png", b"../../etc/passwd", b""]),
                     st.none() | st.sampled_from([b"video/mp4", b"image/png", b"text/plain"]),
                     st.one_of(texts.map(lambda s: s.encode("utf-8", "surrogatepass")), file_data,
                               st.sampled_from([b"2", b"-1", b'["a", "b"]', b"[1, 2]", b"{}"])))
    boundary = st.sampled_from([b"fuzzBoundary", b"x", b"a" * 70])

    def build(parts: list, b: bytes, announced: bytes | None, cut: int) -> tuple[bytes, bytes]:
        body = multipart(parts, b)
        ctype = b"multipart/form-data" + (b"; boundary=" + announced if announced is not None else b"")
        return ctype, body[:len(body) - cut] if cut else body

    return st.builds(build, st.lists(part, max_size=6), boundary,
                     st.sampled_from([b"fuzzBoundary", b"x", b"a" * 70, b"", b'"fuzzBoundary"']) | st.none(),
                     st.sampled_from([0, 0, 0, 1, 5, 40]))


@budget(30, 1000)
@pytest.mark.parametrize("name", SYSTEMS)
def test_multipart_uploads_get_2xx_or_a_4xx_reason(request, name, n):
    """The upload route with parts named after the request's fields or anything, damaged media,
    truncated bodies and boundaries that do not match."""
    target: Target = request.getfixturevalue(name)

    @fuzz(n)
    @given(upload=target.uploads)
    def one(upload: tuple[bytes, bytes]) -> None:
        ctype, body = upload
        check(target.client.request("POST", UPLOAD, [(b"content-type", ctype), *target.auth], [body]),
              target.response, upload)

    one()


def test_a_violet_upload_answers_like_json(violet):
    """The multipart route is not only refusing: a real upload gets the JSON route's answer."""
    fields = [(b"question", None, None, b"which way?"), (b"options", None, None, b'["left", "right"]'),
              (b"video_b64", b"clip.mp4", b"video/mp4", violet.media["mp4"])]
    reply = violet.client.request("POST", UPLOAD, [(b"content-type", b"multipart/form-data; boundary=B")],
                                  [multipart(fields, b"B")])
    want = violet.client.post_json({"question": "which way?", "options": ["left", "right"],
                                    "video_b64": base64.b64encode(violet.media["mp4"]).decode()})
    assert reply.status == want.status == 200, (reply.body, want.body)
    assert reply.json() == want.json()


# ----------------------------------------------------------------------------- body limit


def cut(body: bytes, points: list[int]) -> list[bytes]:
    """``body`` split at ``points`` (modulo its length): the chunks of a chunked upload."""
    edges = sorted({0, len(body), *(p % (len(body) + 1) for p in points)})
    return [body[a:b] for a, b in zip(edges, edges[1:])] or [b""]


@budget(40, 800)
def test_body_limit_holds_for_declared_and_chunked_bodies(wander, n):
    """A valid request padded to ``size`` bytes: over the limit it is 413 before the app reads
    the rest (however it is chunked, whatever Content-Length claims), up to it the request is served."""
    body = json.dumps(wander.valid).encode()

    @fuzz(n)
    @given(size=st.integers(len(body), 2 * LIMIT) | st.sampled_from([LIMIT, LIMIT + 1]),
           points=st.lists(st.integers(0, 2 * LIMIT), max_size=8),
           declared=st.sampled_from(["true", "none", "zero", "huge", "junk", "negative"]),
           path=st.sampled_from([PREDICT, UPLOAD]))
    @example(size=LIMIT, points=[], declared="none", path=PREDICT)
    @example(size=LIMIT + 1, points=[], declared="none", path=PREDICT)
    @example(size=LIMIT + 1, points=list(range(0, LIMIT + 1, 1000)), declared="zero", path=PREDICT)
    def one(size: int, points: list[int], declared: str, path: str) -> None:
        padded = body + b" " * (size - len(body))
        chunks = cut(padded, points)
        length = {"true": str(size).encode(), "zero": b"0", "huge": str(LIMIT + 1).encode(), "junk": b"12ab",
                  "negative": b"-1"}.get(declared)
        headers = [(b"content-type", b"application/json"), *wander.auth]
        headers += [(b"content-length", length)] if length is not None else []
        reply = wander.client.request("POST", path, headers, chunks)
        check(reply, wander.response, (size, declared, path))
        if declared == "junk":
            assert reply.status == 400
        elif declared == "huge" or size > LIMIT:
            assert reply.status == 413 and "max_body_bytes" in reply.json()["detail"]
            # refused at the chunk that crossed the limit: the rest was never read
            assert reply.consumed <= LIMIT + max(map(len, chunks)), reply.consumed
        else:
            assert reply.status == (200 if path == PREDICT else 415), reply.body

    one()


# ----------------------------------------------------------------------------- found by fuzzing


def changed(valid: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``valid`` with ``change`` applied; a number given for a matrix field fills that matrix."""
    out = dict(valid)
    for key, value in change.items():
        matrix = isinstance(valid.get(key), list) and isinstance(valid[key][0], list)
        out[key] = np.full(np.shape(valid[key]), value).tolist() if matrix and not isinstance(value, list) else value
    return out


@pytest.mark.parametrize("name, change, field", [
    # LLaViLo: 200 with windows of NaN, answered as null (float32 duration inf, or a model overflow)
    ("llavilo", {"duration": 1e300}, "duration"),
    ("llavilo", {"duration": float("inf")}, "duration"),  # JSON Infinity, as Python's json writes it
    ("llavilo", {"text": 3e38}, "text"),                  # finite float32, overflowing inside the model
    ("llavilo", {"video": 3e38}, "video"),
    # VIOLET: a lone surrogate in an option passed list[str] and failed in the tokenizer: 500
    ("violet", {"options": ["0", "\ud800"]}, "options"),
])
def test_what_fuzzing_found_is_422_naming_the_field(request, name, change, field):
    target: Target = request.getfixturevalue(name)
    reply = target.client.post_json(changed(target.valid, change))
    check(reply, target.response, change)
    assert reply.status == 422 and field in {e["field"].split(".")[0] for e in reply.json()["errors"]}, reply.body


@pytest.mark.parametrize("body, words", [
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b'{"inputs": 1' + b"0" * 5000 + b"}", "digits"),    # beyond Python's int-to-str limit
    (b'{"inputs": "\xff"}', "utf-8"),
])
def test_unparsable_bodies_say_why(wander, body, words):
    """FastAPI answers these 400 "There was an error parsing the body"; the app names the cause."""
    reply = wander.client.request("POST", PREDICT, [(b"content-type", b"application/json"), *wander.auth], [body])
    check(reply, wander.response)
    assert reply.status == 400 and words in reply.json()["detail"], reply.body


@pytest.mark.parametrize("end, words", [
    (float("inf"), "less than or equal"),  # was OverflowError in math.ceil: 500
    (1e9, "less than or equal"),           # was a 5e8-row design matrix: the replica runs out of memory
    (80_000.0, "160000 TRs"),              # within the field bound, beyond MAX_TRS at a 0.5 s TR
])
def test_fmri_word_times_cannot_ask_for_unbounded_predictions(end, words):
    """The same pattern in fMRI's hooks, read rather than fuzzed (a tiny fMRI app needs a fitted
    run): the last word's end sets how many TRs are predicted. The request is refused before the
    featurizer runs (the stub model has none)."""
    from pydantic import ValidationError

    from polymodal.errors import ServeInputError
    from polymodal.models.fmri.model import EncodingModel
    from polymodal.models.fmri.serving import EncodeRequest, serve_predict

    model = EncodingModel(None, 0.5, {"S01": np.zeros((4, 3))}, {"S01": np.zeros(3)})
    story = [{"word": "a", "start": 0.0, "end": 1.0}, {"word": "b", "start": 1.0, "end": end}]
    with pytest.raises((ValidationError, ServeInputError)) as info:
        serve_predict(model, [EncodeRequest.model_validate({"subject": "S01", "words": story})])
    if isinstance(info.value, ServeInputError):
        assert info.value.field == "words.1.end" and words in info.value.message
    else:
        assert [e["loc"] for e in info.value.errors()] == [("words", 1, "end")] and words in str(info.value)


@budget(40, 600)
def test_any_method_and_path_gets_a_4xx_reason(wander, n):
    """Outside the routes: 404 or 405 with a reason, and 401 first wherever a token is needed."""
    paths = st.sampled_from(["/", "/healthz", "/healthz/", "/v1/predict/", "//v1/predict", "/v1/predict/../models",
                             "/v1/models", "/docs", "/openapi.json", "/v1/%00", "/" + "a" * 5000])
    methods = st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])

    @fuzz(n)
    @given(method=methods, path=paths | st.text(max_size=20).map(lambda t: "/" + t), authorized=st.booleans())
    def one(method: str, path: str, authorized: bool) -> None:
        reply = wander.client.request(method, path, wander.auth if authorized else ())
        if not authorized and path != "/healthz":
            assert reply.status == 401, (method, path)
        if method == "HEAD" or reply.status < 400:
            return  # a HEAD answer has no body; /docs and the like are pages
        check(reply, wander.response, (method, path))

    one()


# ----------------------------------------------------------------------------- schemathesis


def schemathesis_run(target: Target, n: int) -> None:
    """Every operation of the app's own OpenAPI schema, valid and invalid data, with the checks
    that need no state: no 5xx, documented status codes, content types and response schemas."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_schema_conformance, status_code_conformance)

    headers = {k.decode(): v.decode() for k, v in target.auth}
    schema = schemathesis.openapi.from_asgi("/openapi.json", target.client.app, headers=headers)
    common = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    @schemathesis.check
    def negative_data_refused(ctx: Any, response: Any, case: Any) -> bool | None:
        """negative_data_rejection, with 413 a refusal too: a body over max_body_bytes is turned
        away before its schema is read."""
        if response.status_code == 413:
            return None
        return negative_data_rejection(ctx, response, case)

    negative = [*common, negative_data_refused]  # data outside the schema must be refused
    for mode, checks in ((GenerationMode.POSITIVE, common), (GenerationMode.NEGATIVE, negative)):
        @fuzz(n)
        @given(case=schema.as_strategy(generation_mode=mode))
        def one(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=checks)

        one()


@budget(25, 400)
@pytest.mark.parametrize("name", SYSTEMS)
def test_schemathesis_finds_no_server_errors(request, name, n):
    schemathesis_run(request.getfixturevalue(name), n)


# ----------------------------------------------------------------------------- real HTTP


@pytest.mark.faults
def test_over_http_through_ray_serve(ray_cluster, wander):
    """The deployment itself on 127.0.0.1 (Serve's proxy, the replica's batching and multiplexing):
    fuzzed bodies and headers, a chunked upload on each side of the limit, and a good request
    answered at the end. Slow to start (Serve and a replica), so under the faults marker only."""
    args = parse_args(wander.args)
    with served(args, "fuzz", runtime_env={"env_vars": {TOKEN_ENV: TOKEN}}) as url, \
            httpx.Client(timeout=60) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # what an HTTP client may send at all (no control characters): UTF-8, or Latin-1 bytes
        # that are not UTF-8 (which the proxy guard refuses with 400 for the headers Ray decodes)
        chars = st.characters(min_codepoint=0x21, max_codepoint=0x2ff, exclude_characters="\x7f")
        printable = st.text(chars, max_size=20).map(str.encode) | st.text(
            st.characters(min_codepoint=0xa0, max_codepoint=0xff), min_size=1, max_size=20).map(
            lambda t: t.encode("latin-1"))
        likely = st.sampled_from([b"houlsby", b"nope", b"image/png", b"application/json", b"text/plain"])
        names = st.sampled_from(["accept", "content-type", "x-request-id", MODEL_HEADER,
                                 MODEL_HEADER.replace("_", "-")])

        @fuzz(60)
        @given(body=encoded(mostly(mutated(wander_bodies(wander.valid)), json_values)),
               extra=st.dictionaries(names, likely | printable))
        def one(body: bytes, extra: dict[str, bytes]) -> None:
            r = client.post(f"{url}{PREDICT}", content=body, headers={**auth, **extra})
            check(Reply(r.status_code, dict(r.headers), r.content, 0), wander.response, (body[:200], extra))

        one()

        # Ray Serve 2.60's proxy decodes these headers as UTF-8 before routing and would answer a
        # bare 500; the session cluster runs polymodal's ProxyGuard (conftest), which answers 400
        for name in (MODEL_HEADER, "x-request-id"):
            r = client.post(f"{url}{PREDICT}", json=wander.valid, headers={**auth, name: b"\xa0"})
            assert r.status_code == 400 and r.json()["detail"] == f"header {name} is not valid UTF-8", r.text

        def chunks(size: int) -> Iterable[bytes]:
            padded = json.dumps(wander.valid).encode()
            padded += b" " * (size - len(padded))
            yield from (padded[i:i + 4096] for i in range(0, len(padded), 4096))

        headers = {**auth, "content-type": "application/json"}
        assert client.post(f"{url}{PREDICT}", content=chunks(LIMIT), headers=headers).status_code == 200
        over = client.post(f"{url}{PREDICT}", content=chunks(LIMIT + 1), headers=headers)
        assert over.status_code == 413 and "max_body_bytes" in over.json()["detail"]
        assert client.get(f"{url}/healthz").status_code == 200
        assert client.post(f"{url}{PREDICT}", json=wander.valid, headers=auth).status_code == 200
