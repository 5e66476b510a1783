"""Security checks: no unsafe deserialisation, no secrets in files or logs, no path escapes,
every config error at once, constant-time bearer tokens, Ray kept local and authenticated.

Static checks read the source with :mod:`ast` (not regexes), so aliases such as
``from pickle import loads as L`` and keyword arguments are understood. Each checker is first
run on planted examples, so a checker that silently finds nothing fails too.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import functools
import inspect
import re
import secrets
import string
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from polymodal import storage
from polymodal.config import load_config
from polymodal.errors import ConfigError, ImportDataError, StorageError

ROOT = Path(__file__).resolve().parents[2]
WANDER_TINY = ROOT / "jobs" / "configs" / "wander_tiny.yaml"

# =========================================================================== unsafe loads

#: source trees that ship; tests/ is left out (it builds malicious pickles on purpose)
SCANNED = ("platform", "jobs", "serve", "bench")

#: deserialisers that run code named by the file, and writers of such files
_ALWAYS_UNSAFE = {
    **{f"{m}.{f}": "unpickles" for m in ("pickle", "_pickle", "cPickle") for f in ("load", "loads", "Unpickler")},
    **{f"{m}.{f}": "writes a pickle" for m in ("pickle", "_pickle", "cPickle") for f in ("dump", "dumps", "Pickler")},
    "joblib.load": "unpickles", "pandas.read_pickle": "unpickles",
    "marshal.load": "loads code objects", "marshal.loads": "loads code objects", "shelve.open": "unpickles",
    "yaml.unsafe_load": "builds arbitrary objects", "yaml.unsafe_load_all": "builds arbitrary objects",
    "yaml.full_load": "builds arbitrary objects", "yaml.full_load_all": "builds arbitrary objects",
    "torch.hub.load": "runs a repository's hubconf.py", "torch.jit.load": "loads TorchScript code",
    "torch.save": "writes a pickle (export safetensors instead)",
    "eval": "runs a string as code", "exec": "runs a string as code",
    "builtins.eval": "runs a string as code", "builtins.exec": "runs a string as code",
}
_TORCH_LOAD = {"torch.load", "torch.serialization.load"}
_NUMPY_LOAD = {"numpy.load"}
_YAML_LOAD = {"yaml.load", "yaml.load_all"}
_SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}
_UNPICKLERS = {"pickle.Unpickler", "_pickle.Unpickler"}
#: modules whose whole purpose is pickling code and objects
_BANNED_MODULES = {"dill", "cloudpickle", "jsonpickle"}

#: (file, finding) pairs allowed on purpose, each with its reason
ALLOWED_FINDINGS = {
    # CMU-MOSI / CMU-MOSEI features exist only as MMSA pickles. SafeUnpickler.find_class refuses
    # every global except numpy arrays and builtin containers (test_wander_importers feeds it an
    # os.system payload). It lowers the risk of an untrusted file; it does not remove it (see
    # SECURITY.md). Nothing else in polymodal may unpickle.
    # It also reads IEMOCAP, which Multimodal-Transformer distributes only as a pickle.
    ("platform/polymodal/models/wander/importers.py", "class SafeUnpickler subclasses pickle.Unpickler"),
    # The Stat 214 lab report's raw_text.pkl holds the Huth lab's DataSequence objects; its
    # find_class maps that class to a plain record and allows only numpy arrays and builtin
    # containers besides (test_fmri_ds003020 feeds it os.system and OrderedDict).
    ("platform/polymodal/models/fmri/importers.py", "class DataSequenceUnpickler subclasses pickle.Unpickler"),
}


class UnsafeLoadFinder(ast.NodeVisitor):
    """Collects ``(line, finding)`` for unsafe deserialisation in one module."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name -> qualified name
        self.found: list[tuple[int, str]] = []

    def _qualified(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            head = self._qualified(node.value)
            return f"{head}.{node.attr}" if head else None
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            self.aliases[alias.asname or top] = alias.name if alias.asname else top
            if top in _BANNED_MODULES:
                self.found.append((node.lineno, f"imports {alias.name}"))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            for alias in node.names:
                self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if node.module.split(".")[0] in _BANNED_MODULES:
                self.found.append((node.lineno, f"imports from {node.module}"))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            if self._qualified(base) in _UNPICKLERS:
                self.found.append((node.lineno, f"class {node.name} subclasses pickle.Unpickler"))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self._qualified(node.func)
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        if name in _ALWAYS_UNSAFE:
            self.found.append((node.lineno, f"{name}() {_ALWAYS_UNSAFE[name]}"))
        elif name in _TORCH_LOAD and not _is_const(kwargs.get("weights_only"), True):
            self.found.append((node.lineno, f"{name}() without weights_only=True"))
        elif name in _NUMPY_LOAD and "allow_pickle" in kwargs and not _is_const(kwargs["allow_pickle"], False):
            self.found.append((node.lineno, f"{name}() with allow_pickle"))
        elif name in _YAML_LOAD:
            loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or self._qualified(loader) not in _SAFE_YAML_LOADERS:
                self.found.append((node.lineno, f"{name}() without a safe Loader (use yaml.safe_load)"))
        if "trust_remote_code" in kwargs and not _is_const(kwargs["trust_remote_code"], False):
            self.found.append((node.lineno, f"{name}(trust_remote_code=...) runs a model repository's code"))
        self.generic_visit(node)


def _is_const(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source: str | ast.Module) -> list[tuple[int, str]]:
    finder = UnsafeLoadFinder()
    finder.visit(ast.parse(source) if isinstance(source, str) else source)
    return finder.found


@functools.lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("source", [
    "import pickle\npickle.loads(b)",
    "from pickle import load as L\nL(f)",
    "import pickle as p\nclass U(p.Unpickler):\n    pass",
    "import pickle\nwith open(p, 'wb') as f:\n    pickle.dump(obj, f)",
    "import torch\ntorch.load(f)",
    "import torch\ntorch.load(f, weights_only=False)",
    "from torch import load\nload(f, map_location='cpu')",
    "import torch\ntorch.save(sd, p)",
    "import numpy as np\nnp.load(f, allow_pickle=True)",
    "import yaml\nyaml.load(s)",
    "import yaml\nyaml.load(s, Loader=yaml.FullLoader)",
    "import yaml\nyaml.unsafe_load(s)",
    "eval(text)",
    "exec(text)",
    "import joblib\njoblib.load(f)",
    "import dill",
    "from cloudpickle import loads",
    "from transformers import AutoModel\nAutoModel.from_pretrained(p, trust_remote_code=True)",
])
def test_finder_flags_unsafe_loads(source):
    assert unsafe_loads(source), source


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load(f, weights_only=True)",
    "import numpy as np\nnp.load(f)\nnp.load(f, allow_pickle=False, mmap_mode='r')",
    "import yaml\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)",
    "from yaml import CSafeLoader, load\nload(s, CSafeLoader)",
    "model.eval()\nengine.eval()",
    "import pickle\nraise pickle.UnpicklingError('refused')",
    "from safetensors.torch import load_file\nload_file(p)",
    "from transformers import AutoModel\nAutoModel.from_pretrained(p)",
])
def test_finder_passes_safe_loads(source):
    assert unsafe_loads(source) == []


def _python_files() -> list[Path]:
    files = [p for d in SCANNED for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 50, f"found only {len(files)} files under {SCANNED}"
    return sorted(files)


def test_no_unsafe_loads_in_shipped_code():
    """Checkpoints and exports are safetensors + JSON/YAML: nothing we ship unpickles, except
    the allowlisted, restricted unpicklers of datasets released only as pickles."""
    seen, unexpected = set(), []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        for line, finding in unsafe_loads(_tree(path)):
            if (rel, finding) in ALLOWED_FINDINGS:
                seen.add((rel, finding))
            else:
                unexpected.append(f"{rel}:{line}: {finding}")
    assert not unexpected, "unsafe deserialisation (use safetensors/JSON, or see SECURITY.md):\n" + \
        "\n".join(unexpected)
    assert seen == ALLOWED_FINDINGS, f"stale allowlist entries: {ALLOWED_FINDINGS - seen}"


@pytest.mark.parametrize("unpickler", ["polymodal.models.wander.importers:SafeUnpickler",
                                       "polymodal.models.fmri.importers:DataSequenceUnpickler"])
def test_allowlisted_unpicklers_restrict_globals(unpickler):
    import importlib
    import pickle

    module, name = unpickler.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert cls.find_class is not pickle.Unpickler.find_class
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        cls.find_class(None, "os", "system")


# =========================================================================== secrets

#: the folders holding committed YAML that Ray, Serve, Tune or kubectl read
CONFIG_DIRS = ("jobs/configs", "serve", "tune_spaces", "k8s")
_SENSITIVE_KEY = re.compile(r"(?i)(secret[_-]?access[_-]?key|access[_-]?key[_-]?id|session[_-]?token|password|"
                            r"passwd|api[_-]?key|private[_-]?key|auth[_-]?token|bearer|^token$|^credentials?$)")
_SENSITIVE_ENV = re.compile(r"(?i)SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIAL|PRIVATE")
_PLACEHOLDER = re.compile(r"^(REPLACE_ME\w*|<[^<>]+>|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)$")
_SECRET_TEXT = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "credentials in a URL": re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "assigned secret": re.compile(r"(?i)(secret|password|token)['\"]?\s*[:=]\s*['\"]?[A-Za-z0-9/+=_-]{20,}"),
}


def _walk(node, path=()):
    """``(path, key, value)`` for every mapping entry and list item (key None) below ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield path + (str(key),), key if isinstance(node, dict) else None, value
        yield from _walk(value, path + (str(key),))


def credential_problems(text: str) -> list[str]:
    """Literal credentials in one YAML file: secret-looking text, sensitive keys with values,
    env entries with literal sensitive values, Secret objects holding real values."""
    problems = [f"looks like a {what}" for what, pattern in _SECRET_TEXT.items() if pattern.search(text)]
    for doc in yaml.safe_load_all(text):
        for where, key, value in _walk(doc):
            dotted = ".".join(where)
            literal = isinstance(value, (str, int)) and not _PLACEHOLDER.match(str(value))
            if isinstance(key, str) and _SENSITIVE_KEY.search(key) and literal:
                problems.append(f"{dotted} holds a literal value; reference an env var or a Secret")
            if isinstance(value, dict) and _SENSITIVE_ENV.search(str(value.get("name", ""))) \
                    and "value" in value and not _PLACEHOLDER.match(str(value["value"])):
                problems.append(f"{dotted}: env {value['name']} has a literal value; use valueFrom.secretKeyRef")
        if isinstance(doc, dict) and doc.get("kind") == "Secret":
            values = {**(doc.get("stringData") or {}),
                      **{k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}}
            problems += [f"Secret {doc['metadata']['name']}.{k} is not a placeholder"
                         for k, v in values.items() if not _PLACEHOLDER.match(str(v))]
    return problems


@pytest.mark.parametrize("text", [
    "storage:\n  aws_secret_access_key: abcd",
    "args:\n  token: s3cr3t",
    "storage:\n  endpoint_url: http://minio:Passw0rd1@127.0.0.1:9000",
    "env:\n  - name: AWS_SECRET_ACCESS_KEY\n    value: abcd",
    "env:\n  - name: RAY_AUTH_TOKEN\n    value: '42'",
    "# key: AKIAIOSFODNN7EXAMPLE\na: 1",
    "kind: Secret\nmetadata: {name: s}\ndata: {token: " + base64.b64encode(b"real-token").decode() + "}",
])
def test_credential_check_flags_planted_secrets(text):
    assert credential_problems(text), text


def test_credential_check_passes_references():
    text = ("args: {token_env: POLYMODAL_SERVE_TOKEN}\n"
            "env:\n  - name: AWS_SECRET_ACCESS_KEY\n    valueFrom: {secretKeyRef: {name: polymodal-s3, key: k}}\n"
            "  - name: RAY_AUTH_MODE\n    value: token\n"
            "authOptions: {mode: token, secretName: polymodal-ray-auth}\n"
            "---\nkind: Secret\nmetadata: {name: s}\nstringData: {token: REPLACE_ME, auth_token: REPLACE_ME}\n")
    assert credential_problems(text) == []


def test_committed_yaml_holds_no_credentials():
    files = sorted(p for d in CONFIG_DIRS for p in (ROOT / d).rglob("*.y*ml"))
    assert len(files) >= 20, files
    problems = [f"{p.relative_to(ROOT)}: {msg}" for p in files for msg in credential_problems(p.read_text())]
    assert not problems, "\n".join(problems)


def _fake_secrets() -> dict[str, str]:
    upper = string.ascii_uppercase + string.digits
    return {"AWS_ACCESS_KEY_ID": "AKIA" + "".join(secrets.choice(upper) for _ in range(16)),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
            "AWS_SESSION_TOKEN": secrets.token_urlsafe(40),
            "POLYMODAL_TEST_SECURITY_TOKEN": secrets.token_urlsafe(32)}


def test_config_cannot_carry_secrets_and_errors_do_not_echo_them(tmp_path, capsys):
    from polymodal.cli import main

    fake = _fake_secrets()
    key_id, secret = fake["AWS_ACCESS_KEY_ID"], fake["AWS_SECRET_ACCESS_KEY"]
    raw = yaml.safe_load(WANDER_TINY.read_text())
    raw["storage"] = {"aws_secret_access_key": secret, "endpoint_url": f"http://{key_id}:{secret}@127.0.0.1:9000"}
    bad = tmp_path / "with_secret.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["train", "--local", "--config", str(bad), "--set", f"storage.session_token={secret}"]) == 2
    err = capsys.readouterr().err
    for path in ("storage.aws_secret_access_key", "storage.endpoint_url", "storage.session_token"):
        assert path in err, err
    assert secret not in err and key_id not in err

    from polymodal.serving.app import parse_args

    with pytest.raises(ValueError) as info:  # serve args name the env var, never the token
        parse_args({"checkpoint": "x", "token": secret})
    assert "token" in str(info.value) and secret not in str(info.value)


def test_secrets_from_env_never_reach_run_files_or_logs(tmp_path, monkeypatch, caplog, capsys):
    """Credentials in the environment (as Kubernetes Secrets deliver them) go through the real
    config dump, export, summary, metrics log and report, and appear in none of their files."""
    import logging

    import torch

    from polymodal.report import write_report
    from polymodal.serving.app import parse_args, read_token
    from polymodal.train.checkpoint import load_export, write_export
    from polymodal.runs import write_summary
    from polymodal.train.metrics_log import MetricsLog

    fake = _fake_secrets()
    for name, value in fake.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    cfg = load_config(str(WANDER_TINY), [f"storage_path={tmp_path / 'runs'}", "name=secret-check",
                                         "storage.endpoint_url=http://127.0.0.1:9000"])
    ckpt = Path(storage.join(cfg.run_uri, "checkpoints", "epoch_0000"))
    write_export(ckpt / "model", cfg, {"head.weight": torch.zeros(2, 3)}, {"epoch": 0, "metrics": {"accuracy": 0.5}})
    assert load_export(ckpt)[0] == cfg
    log = MetricsLog(cfg.run_uri, cfg.storage)
    log.log({"epoch": 0, "global_step": 4, "train_loss": 0.7, "val_accuracy": 0.5})
    log.close()
    write_summary(cfg, latest=str(ckpt), best=str(ckpt), metrics={"accuracy": 0.5})
    write_report(cfg)
    args = parse_args({"checkpoint": cfg.run_uri, "token_env": "POLYMODAL_TEST_SECURITY_TOKEN"})
    assert read_token(args.token_env) == fake["POLYMODAL_TEST_SECURITY_TOKEN"].encode()

    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"config.yaml", "trainable.safetensors", "summary.json", "metrics.csv", "report.md"} <= names, names
    outputs = {str(p.relative_to(tmp_path)): p.read_bytes() for p in written}
    outputs["serve args"] = args.model_dump_json().encode()
    captured = capsys.readouterr()
    outputs["logs"] = (caplog.text + captured.out + captured.err).encode()
    leaks = [f"{where}: {name}" for where, data in outputs.items() for name, value in fake.items()
             if value.encode() in data]
    assert not leaks, leaks


# =========================================================================== paths


@pytest.mark.parametrize("name", ["..", "../escape", "a/../../b", "/etc", "runs/../../x"])
def test_run_name_cannot_leave_storage_path(name):
    with pytest.raises(ConfigError) as info:
        load_config(str(WANDER_TINY), [f"name={name}"])
    assert [p for p, _ in info.value.errors] == ["name"], info.value.errors


def test_sweep_name_cannot_leave_sweeps_folder(tmp_path):
    from polymodal.tune import load_space

    space = yaml.safe_load((ROOT / "tune_spaces" / "wander.yaml").read_text())
    space["name"] = "../../escape"
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    assert "name" in [p for p, _ in info.value.errors], info.value.errors


def test_serve_adapter_ids_and_index_ids_are_names_not_paths():
    from polymodal.models.llavilo.serving import MomentRequest, VideoIndex, _video_of
    from polymodal.errors import ServeInputError
    from polymodal.serving.app import parse_args

    with pytest.raises(ValueError, match=r"adapter ids \['\.\./x'\]"):
        parse_args({"checkpoint": "x", "adapters": {"../x": "s3://b/adapter"}})
    # a request's `vid` is a key of the index loaded at start-up, never a path
    index = VideoIndex("s3://b/index", {"v1": np.zeros((2, 4), np.float32)}, {"v1": 4.0})
    request = MomentRequest(query="q", text=[[0.0] * 4], vid="../../etc/passwd")
    with pytest.raises(ServeInputError) as info:
        _video_of(request, None, index)
    assert info.value.field == "vid"


def test_dataset_files_cannot_point_outside_their_roots(tmp_path):
    from polymodal.models.llavilo.importers import import_qvhighlights
    from polymodal.models.violet.importers import read_webvid

    (tmp_path / "videos").mkdir()
    (tmp_path / "webvid.csv").write_text("videoid,name,page_dir\npasswd,a cat,../../etc\n")
    with pytest.raises(ImportDataError, match=r"webvid\.csv: line 2: .*'\.\.'"):
        read_webvid(str(tmp_path / "webvid.csv"), str(tmp_path / "videos"))
    with pytest.raises(StorageError, match="invalid split name '../x'"):
        import_qvhighlights({"../x": "q.jsonl"}, ["features"], None, str(tmp_path / "out"), progress=False)
    (tmp_path / "q.jsonl").write_text('{"qid": 1, "query": "a b", "vid": "../../etc/passwd", "duration": 150, '
                                      '"relevant_windows": [[0, 2]]}\n')
    (tmp_path / "features").mkdir()
    with pytest.raises(StorageError, match=r"'\.\./\.\./etc/passwd\.npz'.*'\.\.'"):
        import_qvhighlights({"train": str(tmp_path / "q.jsonl")}, [str(tmp_path / "features")], None,
                            str(tmp_path / "out"), progress=False)


def test_food101_image_paths_stay_inside_the_root(tmp_path):
    from PIL import Image

    from polymodal.models.wander.importers import _check_record, _Listing

    root = tmp_path / "food101"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    for rel in ("../outside.png", str(tmp_path / "outside.png")):
        reason = _check_record(str(root), {"img": rel, "text": "t", "label": "soup"}, _Listing(None))
        assert isinstance(reason, str), f"{rel!r} was accepted as {reason[0]}"


def test_checkpoint_download_refuses_object_keys_with_dotdot(s3_server, tmp_path):
    """A key like ``ckpt/../../x`` planted in a shared bucket must not write outside the
    folder a checkpoint or export is downloaded into (restore, evaluate, serve)."""
    uri = f"s3://polymodal/test-{uuid.uuid4().hex}/ckpt"
    fs, key = storage.get_fs(uri)
    fs.pipe_file(f"{key}/state.json", b"{}")
    fs.pipe_file(f"{key}/../../escaped.txt", b"planted")  # S3 keeps the key as written
    dest = tmp_path / "a" / "b"
    with pytest.raises(StorageError, match=r"refusing to copy '\.\./\.\./escaped\.txt'"):
        storage.download_dir(uri, str(dest))
    assert not list(tmp_path.rglob("escaped.txt"))


# =========================================================================== configs


def test_load_config_reports_every_error_at_once(tmp_path):
    raw = yaml.safe_load(WANDER_TINY.read_text())
    raw["optim"]["bacth_size"] = 8            # unknown key
    raw["data"]["shuffle_buffer"] = "lots"    # wrong type
    raw["scaling"]["num_workers"] = 0         # impossible value
    raw["model"]["rank_h"] = -1               # impossible value in the task's own section
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), ["deepspeed.zero_stage=7", "no_equals_sign"])
    paths = [p for p, _ in info.value.errors]
    assert set(paths) == {"optim.bacth_size", "data.shuffle_buffer", "scaling.num_workers", "model.rank_h",
                          "deepspeed.zero_stage", "no_equals_sign"}, info.value.errors
    text = str(info.value)
    assert text.startswith(f"6 config errors in {path}") and "unknown key" in text and "'lots'" in text


# =========================================================================== auth


def _asgi_status(token: bytes | None, headers: list[tuple[bytes, bytes]], path: str = "/v1/models") -> int:
    from polymodal.serving.app import GuardMiddleware

    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": headers}
    asyncio.run(GuardMiddleware(app, token, max_body_bytes=1000)(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent)
    assert token is None or token not in body  # a refusal never echoes the token
    return sent[0]["status"]


def test_bearer_check_is_constant_time_and_refuses_near_misses(monkeypatch):
    import hmac

    token = secrets.token_urlsafe(32).encode()
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = b"authorization"
    refused = [[], [(auth, b"Bearer wrong")], [(auth, b"Bearer " + token[:-1])], [(auth, b"Bearer " + token + b"x")],
               [(auth, b"Basic " + token)], [(auth, token)], [(b"x-token", b"Bearer " + token)]]
    for headers in refused:
        assert _asgi_status(token, headers) == 401, headers
    assert _asgi_status(token, [(auth, b"Bearer " + token)]) == 200
    assert _asgi_status(token, [(auth, b"bearer " + token)]) == 200  # the scheme is case-insensitive
    assert _asgi_status(token, [], path="/healthz") == 200           # probes need no token
    assert _asgi_status(None, []) == 200                              # token_env unset: no auth
    assert (token, token) in compared and all(b == token for _, b in compared)


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _ray_init_hosts(source: str | ast.Module) -> list[str]:
    """Values of ``dashboard_host=`` in every ``ray.init(...)`` call ('<dynamic>' when not a literal)."""
    hosts = []
    for node in ast.walk(ast.parse(source) if isinstance(source, str) else source):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("ray.init", "init"):
            for kw in node.keywords:
                if kw.arg == "dashboard_host":
                    hosts.append(kw.value.value if isinstance(kw.value, ast.Constant) else "<dynamic>")
    return hosts


def test_local_ray_clusters_bind_loopback_and_keep_token_auth():
    import ray

    # a new local cluster from ray.init() puts its dashboard and job server on 127.0.0.1, and
    # Ray 2.60 turns token auth on for it unless RAY_AUTH_MODE says otherwise
    assert inspect.signature(ray.init).parameters["dashboard_host"].default == "127.0.0.1"
    assert _ray_init_hosts("import ray\nray.init(dashboard_host='0.0.0.0')") == ["0.0.0.0"]
    files = _python_files() + sorted((ROOT / "tests").glob("*.py"))
    open_hosts = [f"{p.relative_to(ROOT)}: {h}" for p in files for h in _ray_init_hosts(_tree(p))
                  if h not in _LOOPBACK]
    assert not open_hosts, open_hosts
    # nothing turns token auth off or binds a local head publicly (k8s/ is checked by test_k8s.py)
    mode = re.compile(r"RAY_AUTH_MODE['\"]?[ \t]*[:=,][ \t]*['\"]?([A-Za-z]+)")
    host_flag = re.compile(r"--dashboard-host[= \t]+['\"]?([^\s'\"]+)")
    texts = [*files, ROOT / "Makefile", ROOT / "README.md", *(ROOT / ".ci").glob("*"), *(ROOT / "k8s").glob("*")]
    texts = [p for p in texts if p.is_file()]
    problems = []
    for path in texts:
        text = path.read_text()
        problems += [f"{path.relative_to(ROOT)}: RAY_AUTH_MODE={m}" for m in mode.findall(text) if m != "token"]
        problems += [f"{path.relative_to(ROOT)}: dashboard host {h}" for h in host_flag.findall(text)
                     if h not in _LOOPBACK]
    assert not problems, problems
    for path in sorted((ROOT / "serve").glob("*.yaml")):
        host = (yaml.safe_load(path.read_text()).get("http_options") or {}).get("host", "127.0.0.1")
        assert host in _LOOPBACK, f"{path.name}: Serve binds {host}; keep 127.0.0.1 locally (k8s uses a Service)"
