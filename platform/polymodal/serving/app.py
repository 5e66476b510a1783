"""The Serve spine: one deployment that serves a task's checkpoint, plus adapters, over HTTP.

Routes (relative to the application's route prefix)::

    GET  /healthz     no auth; 200 while the replica can answer, else 503 with why (:class:`Health`)
    GET  /v1/models   default model id, adapter ids (and whether loaded), task, request schema
    POST /v1/predict  body = the task's request model (one example); batched with @serve.batch
    POST /v1/predict/upload  the same request as multipart form data (files -> base64 fields)

``Accept: image/png`` (or another binary type) asks for the task's binary rendering of the
response (:meth:`~polymodal.task.Task.serve_media`, e.g. ChefFusion's PNG); 406 if it has none.

The ``serve_multiplexed_model_id`` header picks an adapter (absent = the default model).
Adapters load on demand through ``@serve.multiplexed``; when an adapter's
:meth:`~polymodal.task.Task.adapter_key` equals the default model's, its frozen
parameters are the default model's own tensors, so one backbone sits in memory for all.

Everything but ``/healthz`` needs ``Authorization: Bearer <token>`` when ``token_env`` is set.
Errors: 401 bad/missing token, 404 unknown adapter, 406 no such rendering, 413 body too large,
415 not multipart (upload route), 422 bad body or shapes (naming the field), 503 overload
(Serve's ``max_queued_requests``), 500 otherwise with a short message (the traceback goes to
the replica log only).

The routes are built by :func:`build_api`, which the deployment calls from its replica;
:func:`local_app` builds the same app in-process without Ray (tests, fuzzing).
"""

# No `from __future__ import annotations`: FastAPI reads route annotations at runtime, and the
# request body class is a local built per replica from the checkpoint's config.

import asyncio
import copy
import hmac
import logging
import os
import re
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve
from torch import nn

from polymodal.config import ExperimentConfig
from polymodal.errors import PolymodalError, ServeInputError
from polymodal.registry import get_task
from polymodal.task import Task
from polymodal.serving.proxy import send_json
from polymodal.runs import resolve_checkpoint
from polymodal.train.checkpoint import load_trainable, read_config, read_export

logger = logging.getLogger("ray.serve")

DEFAULT_MODEL_ID = "default"
MODEL_HEADER = "serve_multiplexed_model_id"
DEPLOYMENT_NAME = "PolymodalServer"
OPEN_PATHS = ("/healthz",)
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


# --------------------------------------------------------------------------- arguments


class ServeArgs(BaseModel):
    """``args:`` of a Serve application (``serve/config.yaml``) or of :func:`app_builder`."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(..., min_length=1, description="default model: a checkpoint folder, its model/ "
                                                           "export, or a run folder (its best checkpoint); "
                                                           "local or s3://")
    adapters: dict[str, str] = Field(default_factory=dict, description="adapter id -> checkpoint URI, trained "
                                                                        "from the same frozen backbone")
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                  description="env var holding the bearer token; unset = no auth")
    max_batch_size: int = Field(16, ge=1, description="@serve.batch size; batches never exceed "
                                                      "max_ongoing_requests")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    max_ongoing_requests: int = Field(8, ge=1, description="per replica; config.yaml deployments: overrides")
    max_queued_requests: int = Field(16, ge=-1, description="per proxy; beyond it -> 503; -1 = unbounded")
    max_models_per_replica: int = Field(4, ge=1, description="adapters cached per replica (LRU)")
    max_body_bytes: int = Field(1_000_000, ge=1, description="larger request bodies -> 413")
    index: str | None = Field(None, min_length=1, description="a dataset the task looks request items up in "
                                                               "(LLaViLo: clip features by `vid`); local or s3://")

    @field_validator("adapters")
    @classmethod
    def _adapter_ids(cls, adapters: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in adapters if not re.match(_ID_PATTERN, k))
        if bad:
            raise ValueError(f"adapter ids {bad} must match {_ID_PATTERN} (they travel in an HTTP header)")
        if DEFAULT_MODEL_ID in adapters:
            raise ValueError(f"adapter id {DEFAULT_MODEL_ID!r} is reserved for the checkpoint; rename it")
        empty = sorted(k for k, v in adapters.items() if not v.strip())
        if empty:
            raise ValueError(f"adapters {empty} have an empty checkpoint URI")
        return adapters


def parse_args(args: "dict[str, Any] | ServeArgs") -> ServeArgs:
    """Strictly validate builder args; unknown keys and bad values raise ValueError naming them."""
    if isinstance(args, ServeArgs):
        return args
    if not isinstance(args, dict):
        raise ValueError(f"serve args must be a mapping, got {type(args).__name__}")
    unknown = sorted(set(args) - set(ServeArgs.model_fields))
    if unknown:
        raise ValueError(f"unknown serve args {unknown}; valid keys are {sorted(ServeArgs.model_fields)}")
    try:
        return ServeArgs.model_validate(args)
    except ValidationError as exc:
        lines = [f"args.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ValueError("invalid serve args:\n  " + "\n  ".join(lines)) from None


def read_token(token_env: str | None) -> bytes | None:
    """The bearer token from the environment; fail fast if the variable is named but empty."""
    if token_env is None:
        return None
    value = os.environ.get(token_env, "")
    if not value.strip():
        raise PolymodalError(
            f"token_env={token_env!r} but ${token_env} is empty or unset in the replica; export it before "
            f"`serve run`, or pass it via runtime_env.env_vars, or drop token_env to serve without auth")
    return value.encode()


# --------------------------------------------------------------------------- models


def task_adapter_key(task: Task, model_cfg: BaseModel) -> str | None:
    try:
        return task.adapter_key(model_cfg)
    except NotImplementedError:
        return None


@dataclass(eq=False)  # identity semantics: weakly referenced and grouped by id()
class LoadedModel:
    """A model ready for :meth:`Task.serve_predict`."""

    model_id: str
    checkpoint: str
    cfg: ExperimentConfig
    task: Task
    model: nn.Module
    key: str | None
    shared_parameters: int = 0  # elements whose storage is the default model's


def clone_sharing_frozen(base: nn.Module) -> nn.Module:
    """Deep copy of ``base`` in which every frozen parameter IS the base's (same object).

    Used when an adapter has the same model config as the base: no backbone load at all.
    """
    memo = {id(p): p for p in base.parameters() if not p.requires_grad}
    return copy.deepcopy(base, memo)


def tie_frozen(model: nn.Module, base: nn.Module) -> None:
    """Replace each frozen parameter of ``model`` by the base's parameter of the same name when
    both are frozen and hold equal values, so ``model``'s own copy can be freed."""
    base_params = dict(base.named_parameters())
    for name, p in list(model.named_parameters()):
        bp = base_params.get(name)
        if (p.requires_grad or bp is None or bp.requires_grad or bp.shape != p.shape or bp.dtype != p.dtype
                or not torch.equal(bp, p)):
            continue
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, bp)


def shared_elements(model: nn.Module, base: nn.Module) -> int:
    """Parameter elements of ``model`` stored in the base's memory (data_ptr identity)."""
    ptrs = {p.data_ptr() for p in base.parameters()}
    return sum(p.numel() for p in model.parameters() if p.data_ptr() in ptrs)


class Health:
    """Whether a replica can still answer, for Serve's health check and ``/healthz``.

    A model that fails to load never gets here: the replica's constructor raises and Serve
    reports the deployment failed, with the reason. At run time a request may fail because of
    what it asks (that is not the replica's fault, and replacing the replica would let one bad
    request cycle them all), or because the replica broke: a dead CUDA context, a poisoned
    model, a lost mount. So after ``streak_limit`` internal errors in a row the check reruns the
    last request the default model answered (the canary); only if that fails too is the
    replica unhealthy, and Serve replaces it. The devices the model lives on are probed with
    one tiny op on every check.
    """

    def __init__(self, streak_limit: int = 3):
        self.streak_limit = streak_limit
        self.streak = 0                      # internal errors in a row (input errors don't count)
        self.last_error = ""
        self.canary: BaseModel | None = None  # a request the default model answered

    def record(self, default_model: bool, request: BaseModel, outcome: Any) -> None:
        if isinstance(outcome, ServeInputError):
            return
        if isinstance(outcome, Exception):
            self.streak += 1
            self.last_error = f"{type(outcome).__name__}: {str(outcome)[:200]}"
        else:
            self.streak = 0
            if default_model and self.canary is None:
                self.canary = request

    def problem(self, base: LoadedModel) -> str | None:
        for device in {p.device for p in base.model.parameters()}:
            try:
                torch.ones(1, device=device).add_(1).cpu()
            except Exception as exc:  # noqa: BLE001 -- any failure means the device is unusable
                return f"device {device} fails a one-element op: {type(exc).__name__}: {exc}"
        if self.streak < self.streak_limit or self.canary is None:
            return None
        try:
            base.task.serve_predict(base.model, [self.canary])
        except Exception as exc:  # noqa: BLE001
            return (f"{self.streak} requests in a row failed (last: {self.last_error}), and a request the "
                    f"default model answered before now fails too: {type(exc).__name__}: {str(exc)[:200]}")
        self.streak = 0  # the canary passes: those failures were the requests' own
        return None


class ModelStore:
    """The default model plus on-demand adapters; no Ray needed (tests use it in-process)."""

    def __init__(self, args: ServeArgs):
        self.args = args
        ckpt = resolve_checkpoint(args.checkpoint)
        task = get_task(read_config(ckpt).task)
        cfg, model = task.load_checkpoint(ckpt)
        self.base = LoadedModel(DEFAULT_MODEL_ID, ckpt, cfg, task, model.eval(),
                                task_adapter_key(task, cfg.model))
        self.task = task
        self.index = task.open_index(args.index, cfg.storage) if args.index else None
        model.serve_index = self.index  # what serve_predict may look items up in (None: nothing)
        self.request_model = task.request_model(cfg.model)
        self.response_model = task.response_model(cfg.model)
        # adapters: check the task now (one small read each) so a wrong one fails at startup
        self.adapter_checkpoints: dict[str, str] = {}
        bad = []
        for aid, uri in args.adapters.items():
            resolved = resolve_checkpoint(uri)
            acfg = read_config(resolved)
            if acfg.task != cfg.task:
                bad.append(f"{aid}: task {acfg.task!r}")
            self.adapter_checkpoints[aid] = resolved
        if bad:
            raise PolymodalError(f"adapters must be trained for the checkpoint's task {cfg.task!r}; "
                                 f"got {'; '.join(bad)}. Serve them as a separate application")
        self.loaded: "weakref.WeakValueDictionary[str, LoadedModel]" = weakref.WeakValueDictionary()
        self.health = Health()

    @property
    def model_ids(self) -> list[str]:
        return [DEFAULT_MODEL_ID, *self.adapter_checkpoints]

    def load_adapter(self, model_id: str) -> LoadedModel:
        """Build adapter ``model_id``, sharing the base's frozen parameters when keys match."""
        ckpt = self.adapter_checkpoints[model_id]
        cfg, weights, _ = read_export(ckpt)
        key = task_adapter_key(self.task, cfg.model)
        base = self.base.model
        if key is not None and key == self.base.key and cfg.model == self.base.cfg.model:
            model = clone_sharing_frozen(base)           # same architecture: no backbone load
        else:
            model = self.task.build_model(cfg.model)
            if key is not None and key == self.base.key:
                tie_frozen(model, base)                  # other head/method, same frozen encoders
        load_trainable(model, weights)
        model.serve_index = self.index
        loaded = LoadedModel(model_id, ckpt, cfg, self.task, model.eval(), key, shared_elements(model, base))
        self.loaded[model_id] = loaded
        logger.info("loaded adapter %s from %s (%d frozen elements shared with the default model)",
                    model_id, ckpt, loaded.shared_parameters)
        return loaded

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` returns."""
        def entry(mid: str, ckpt: str, loaded: LoadedModel | None) -> dict[str, Any]:
            out: dict[str, Any] = {"id": mid, "checkpoint": ckpt, "loaded": loaded is not None}
            if loaded is not None:
                n = sum(p.numel() for p in loaded.model.parameters())
                out.update(adapter_key=loaded.key, parameters=n, shared_parameters=loaded.shared_parameters)
            return out

        models = [entry(DEFAULT_MODEL_ID, self.base.checkpoint, self.base)]
        models[0]["shared_parameters"] = 0
        models += [entry(a, c, self.loaded.get(a)) for a, c in self.adapter_checkpoints.items()]
        return {"default_model": DEFAULT_MODEL_ID, "task": self.base.cfg.task, "model_header": MODEL_HEADER,
                "models": models, "request_schema": self.request_model.model_json_schema()}

    def run_batch(self, items: list[tuple[LoadedModel, BaseModel]]) -> list[Any]:
        """Responses (or the exception for that item) for a mixed batch, in order."""
        results: list[Any] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (lm, _) in enumerate(items):
            groups.setdefault(id(lm), []).append(i)
        for idx in groups.values():
            lm = items[idx[0]][0]
            reqs = [items[i][1] for i in idx]
            try:
                outs: list[Any] = lm.task.serve_predict(lm.model, reqs)
            except ServeInputError as exc:
                # one bad example spoils the stacked batch: rerun one by one so only it gets the 422
                outs = [exc] if len(reqs) == 1 else [self._one(lm, r) for r in reqs]
            except Exception as exc:  # noqa: BLE001 -- handed to each caller, who answers 500
                outs = [exc] * len(reqs)
            for i, out in zip(idx, outs):
                results[i] = out
                self.health.record(lm is self.base, items[i][1], out)
        return results

    def health_problem(self) -> str | None:
        """Why this replica should be replaced, or None (see :class:`Health`)."""
        return self.health.problem(self.base)

    @staticmethod
    def _one(lm: LoadedModel, req: BaseModel) -> Any:
        try:
            return lm.task.serve_predict(lm.model, [req])[0]
        except Exception as exc:  # noqa: BLE001
            return exc


# --------------------------------------------------------------------------- HTTP guard


class GuardMiddleware:
    """Pure ASGI: bearer token first (so nothing leaks before auth), then the body-size limit.

    The body (<= ``max_body_bytes``) is buffered and replayed, so a chunked upload that grows
    past the limit is refused with 413 before the app parses a byte of it.
    """

    def __init__(self, app: Any, token: bytes | None, max_body_bytes: int, open_paths: tuple[str, ...] = OPEN_PATHS):
        self.app, self.token, self.max_body_bytes, self.open_paths = app, token, max_body_bytes, open_paths

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                scheme, _, cred = value.partition(b" ")
                # compare_digest: the time taken must not depend on how much of the token matched
                return scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self.token)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if self.token is not None and path not in self.open_paths and not self._authorized(scope):
            return await send_json(send, 401, {"detail": "missing or invalid bearer token; send "
                                                          "'Authorization: Bearer <token>'"},
                                    ((b"www-authenticate", b"Bearer"),))
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await send_json(send, 400, {"detail": "Content-Length header is not an integer"})
            if too_big:
                return await send_json(send, 413, {"detail": f"body of {int(declared)} bytes exceeds the "
                                                              f"limit of {limit} (max_body_bytes)"})
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await send_json(send, 413, {"detail": f"body exceeds the limit of {limit} bytes "
                                                              "(max_body_bytes)"})
            chunks.append(chunk)
            more = message.get("more_body", False)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict[str, Any]:
            return pending.pop() if pending else await receive()

        return await self.app(scope, replay, send)


def _field_errors(exc: Any) -> list[dict[str, str]]:
    """FastAPI/pydantic errors -> [{"field": "inputs.m0", "message": ...}] without echoing input."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        if err.get("type") == "json_invalid":
            out.append({"field": "body", "message": f"malformed JSON: {err.get('ctx', {}).get('error', err['msg'])}"})
        else:
            out.append({"field": ".".join(loc) or "body", "message": err["msg"]})
    return out


def binary_accept(accept: str) -> list[str]:
    """Media types an ``Accept`` header asks for instead of JSON (empty: answer JSON).

    JSON wins whenever the header allows it (``application/json``, ``*/*`` or no header)."""
    types = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
    if not types or any(t in ("application/json", "*/*", "application/*") for t in types):
        return []
    return types


async def form_fields(request: Any) -> dict[str, Any]:
    """Multipart form -> request fields: text fields as strings, files as base64 of their bytes.

    Raises ValueError for a body that is not valid multipart (or repeats a field)."""
    import base64

    out: dict[str, Any] = {}
    try:
        form = await request.form()
    except Exception as exc:  # noqa: BLE001 -- starlette raises several types for broken bodies
        raise ValueError(str(exc) or type(exc).__name__) from None
    for key, value in form.multi_items():
        if key in out:
            raise ValueError(f"field {key!r} is given twice")
        if hasattr(value, "read"):
            out[key] = base64.b64encode(await value.read()).decode()
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- HTTP app


class FieldError(BaseModel):
    field: str = Field(..., description="dotted path of the bad value (inputs.m0), or body")
    message: str


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    detail: str = Field(..., description="what is wrong, and how to fix it")
    errors: list[FieldError] | None = Field(None, description="422: each bad field")


def _documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route may answer (all in :class:`ErrorResponse`)."""
    why = {400: "Content-Length is not an integer, or a malformed multipart body",
           401: "missing or invalid bearer token (when the server has one)", 404: f"unknown model in {MODEL_HEADER}",
           406: "Accept asks for a rendering this response has not", 413: "body over max_body_bytes",
           415: "not multipart/form-data", 422: "the body does not fit the request schema or the model",
           500: "the model failed on a valid request (the replica log has the traceback)"}
    return {code: {"model": ErrorResponse, "description": why[code]} for code in codes}


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "description": "the fields of the /v1/predict body as form fields; a file field carries "
                                     "the raw bytes its base64 field takes"}}}}}


@dataclass(frozen=True)
class Backend:
    """What the HTTP app asks of whoever hosts it: the Serve replica (:class:`PolymodalServer`)
    or, without Ray, :func:`local_backend`."""

    store: ModelStore
    #: (model, one request) -> its response, or the exception serving it raised
    predict: Callable[[LoadedModel, BaseModel], Awaitable[Any]]
    #: an adapter id of ``store`` -> the loaded adapter
    load_adapter: Callable[[str], Awaitable[LoadedModel]]
    #: the HTTP request -> the model id it asks for ("" or None: the default model)
    model_id: Callable[[Any], str | None]
    #: None when healthy, else why not (``/healthz`` answers 503 with it)
    health: Callable[[], Awaitable[str | None]]


def build_api(backend: Backend, token: bytes | None, max_body_bytes: int) -> Any:
    """The FastAPI app of one replica behind :class:`GuardMiddleware` (auth, body limit).

    The Serve deployment builds its app here, and so does :func:`local_app`, so tests exercise
    the deployed routes, validation and error answers in-process."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    store = backend.store
    request_model, response_model = store.request_model, store.response_model
    api = FastAPI(title=f"polymodal {store.base.cfg.task}")

    @api.exception_handler(RequestValidationError)
    async def _invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Any, exc: StarletteHTTPException) -> Any:
        cause = exc.__cause__
        if exc.status_code != 400 or cause is None:
            return await http_exception_handler(request, exc)
        # FastAPI's bare "There was an error parsing the body": say why (a JSON error is a 422 above)
        why = ("nested too deeply" if isinstance(cause, RecursionError)
               else str(cause).split("; use ")[0] or type(cause).__name__)
        return JSONResponse({"detail": f"body: cannot be parsed: {why}",
                             "errors": [{"field": "body", "message": why}]}, status_code=400)

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        problem = await backend.health()
        if problem is not None:
            return JSONResponse({"status": "unhealthy", "detail": problem}, status_code=503)
        return JSONResponse({"status": "ok", "default_model": DEFAULT_MODEL_ID})

    @api.get("/v1/models", responses=_documented(401))
    async def models() -> dict[str, Any]:
        return store.describe()

    async def model_for(request: Request) -> LoadedModel:
        model_id = backend.model_id(request) or DEFAULT_MODEL_ID
        if model_id == DEFAULT_MODEL_ID:
            return store.base
        if model_id not in store.adapter_checkpoints:
            raise HTTPException(404, f"unknown model {model_id!r} in header {MODEL_HEADER}; known: "
                                     f"{store.model_ids}")
        return await backend.load_adapter(model_id)

    async def answer(body: BaseModel, request: Request) -> Any:
        try:
            loaded = await model_for(request)
            result = await backend.predict(loaded, body)
        except HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 -- adapter load failures land here
            result = exc
        if isinstance(result, ServeInputError):
            return JSONResponse({"detail": str(result), "errors": [{"field": result.field,
                                                                    "message": result.message}]},
                                status_code=422)
        if isinstance(result, Exception):
            logger.error("predict failed", exc_info=result)
            return JSONResponse({"detail": f"internal error ({type(result).__name__}); see the replica "
                                           "log"}, status_code=500)
        wanted = binary_accept(request.headers.get("accept", ""))
        if wanted:
            media = store.task.serve_media(result)
            if media is None or media[1] not in wanted:
                return JSONResponse({"detail": f"this response has no {' or '.join(wanted)} rendering; "
                                               "ask for application/json"}, status_code=406)
            return Response(content=media[0], media_type=media[1])
        return result

    @api.post("/v1/predict", response_model=response_model,
              responses=_documented(400, 401, 404, 406, 413, 422, 500))
    async def predict(body: request_model, request: Request) -> Any:  # type: ignore[valid-type]
        return await answer(body, request)

    @api.post("/v1/predict/upload", response_model=response_model, openapi_extra=_UPLOAD_BODY,
              responses=_documented(400, 401, 404, 406, 413, 415, 422, 500))
    async def predict_upload(request: Request) -> Any:
        """The request as multipart form data: fields by name, files as their base64 content."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return JSONResponse({"detail": "send multipart/form-data here (JSON goes to /v1/predict)"},
                                status_code=415)
        try:
            body = request_model.model_validate(await form_fields(request))
        except ValidationError as exc:
            errors = _field_errors(exc)
            return JSONResponse({"detail": "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                                 "errors": errors}, status_code=422)
        except ValueError as exc:  # a malformed multipart body
            return JSONResponse({"detail": f"malformed multipart body: {exc}"}, status_code=400)
        return await answer(body, request)

    api.add_middleware(GuardMiddleware, token=token, max_body_bytes=max_body_bytes)
    return api


def local_backend(store: ModelStore) -> Backend:
    """The replica's behaviour without Ray: each request is a batch of one, adapters load on
    first use and stay cached (LRU, ``max_models_per_replica``), the model id is the header's."""
    from collections import OrderedDict

    cache: "OrderedDict[str, LoadedModel]" = OrderedDict()

    async def predict(loaded: LoadedModel, body: BaseModel) -> Any:
        return (await asyncio.to_thread(store.run_batch, [(loaded, body)]))[0]

    async def load_adapter(model_id: str) -> LoadedModel:
        if model_id not in cache:
            cache[model_id] = await asyncio.to_thread(store.load_adapter, model_id)
            while len(cache) > store.args.max_models_per_replica:
                cache.popitem(last=False)
        cache.move_to_end(model_id)
        return cache[model_id]

    def model_id(request: Any) -> str | None:
        # both spellings, as Serve's proxy reads it (proxies such as nginx turn _ into -)
        return request.headers.get(MODEL_HEADER) or request.headers.get(MODEL_HEADER.replace("_", "-"))

    async def health() -> str | None:
        return await asyncio.to_thread(store.health_problem)

    return Backend(store, predict, load_adapter, model_id, health)


def local_app(args: "dict[str, Any] | ServeArgs") -> Any:
    """One replica's ASGI app in this process, without Ray (tests, fuzzing, ``uvicorn`` for a
    quick look): the same routes, auth, limits and errors as the deployment, minus batching
    across callers."""
    parsed = parse_args(args)
    return build_api(local_backend(ModelStore(parsed)), read_token(parsed.token_env), parsed.max_body_bytes)


# --------------------------------------------------------------------------- deployment


@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 1}, health_check_period_s=10)
@serve.ingress()
class PolymodalServer:
    """One replica: the default model, an adapter cache, and the HTTP app of :func:`build_api`."""

    def __init__(self, args: dict[str, Any]):
        self.args = parse_args(args)
        self._token = read_token(self.args.token_env)
        self.store = ModelStore(self.args)
        self.predict_batch.set_max_batch_size(self.args.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        store = self.store

        # A closure rather than a method so max_models_per_replica can come from args; Serve
        # detects multiplexed loaders stored on the instance.
        async def load_adapter(model_id: str) -> LoadedModel:
            return await asyncio.to_thread(store.load_adapter, model_id)

        self._load_adapter = serve.multiplexed(max_num_models_per_replica=self.args.max_models_per_replica)(
            load_adapter)

    async def health(self) -> str | None:
        # no "still loading" state: Serve calls this only once the constructor (the load) returned
        return await asyncio.to_thread(self.store.health_problem)

    async def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s``; raising marks the replica unhealthy
        and Serve replaces it (:class:`Health` says when)."""
        problem = await self.health()
        if problem is not None:
            raise RuntimeError(problem)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict_batch(self, items: list[tuple[LoadedModel, BaseModel]]) -> list[Any]:
        # torch runs in a thread so /healthz and queueing stay responsive during a forward pass
        return await asyncio.to_thread(self.store.run_batch, items)

    def __serve_build_asgi_app__(self) -> Any:
        backend = Backend(self.store, predict=lambda loaded, body: self.predict_batch((loaded, body)),
                          load_adapter=self._load_adapter,
                          # the proxy reads the header and hands the id over in the request context
                          model_id=lambda _request: serve.get_multiplexed_model_id(),
                          health=self.health)
        return build_api(backend, self._token, self.args.max_body_bytes)


def build_deployment(args: ServeArgs, **options: Any) -> Any:
    """The deployment with the args' request limits; ``options`` (a config file's ``deployments:``
    entry) go to ``Deployment.options`` and win over the args' limits. A declared
    ``ray_actor_options.memory`` smaller than the checkpoint's weights plus the index raises a
    PolymodalError (:func:`polymodal.serving.memory.check_replica_memory`)."""
    from polymodal.serving.memory import check_replica_memory

    limits = {"max_ongoing_requests": args.max_ongoing_requests, "max_queued_requests": args.max_queued_requests}
    merged = {**limits, **options}
    # a replica whose declared memory cannot hold its weights and index is refused here, not OOM-killed later
    check_replica_memory(args.checkpoint, args.index, (merged.get("ray_actor_options") or {}).get("memory"))
    return PolymodalServer.options(**merged)


def app_builder(args: "dict[str, Any] | ServeArgs") -> Any:
    """Serve application builder: strict ``args`` -> a bound :class:`PolymodalServer`."""
    parsed = parse_args(args)
    return build_deployment(parsed).bind(parsed.model_dump())
