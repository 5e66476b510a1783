"""Static checks of the KubeRay manifests in ``k8s/``: pure file parsing, no cluster.

Covers the expected resources, required fields, resource requests/limits, GPU groups,
pinned images, Secret-only credentials, Ray token auth, no public exposure of Ray ports,
and that every entry point / import path the manifests name exists in the repo. When the
KubeRay v1.7.0 CRDs sit beside the checkout (``../shared/conformance/kuberay-v1.7.0``),
every resource is also validated against its CRD's OpenAPI v3 schema, made strict so
misspelled fields fail.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CRD_DIR = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "kuberay-v1.7.0"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}

RAY_VERSION = "2.60.0"
RAY_PORTS = {6379, 8265, 10001}
S3_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_ENV = (*S3_CREDENTIAL_ENV, "AWS_DEFAULT_REGION", "POLYMODAL_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
SENSITIVE_ENV = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|CREDENTIAL|PRIVATE", re.I)
SECRETS_EXAMPLE = "secrets.example.yaml"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --------------------------------------------------------------------------- loading


def _load_all() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        with path.open() as f:
            for doc in yaml.load_all(f, Loader=_Loader):
                if doc is not None:
                    docs.append((path.name, doc))
    return docs


DOCS = _load_all()
RAY_DOCS = [(f, d) for f, d in DOCS if str(d.get("apiVersion", "")).startswith("ray.io/")]
RAY_JOBS = [(f, d) for f, d in RAY_DOCS if d.get("kind") == "RayJob"]
RAY_SERVICES = [(f, d) for f, d in RAY_DOCS if d.get("kind") == "RayService"]


def _id(item: tuple[str, dict]) -> str:
    name, doc = item
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _cluster_specs(doc: dict) -> list[dict]:
    """The RayCluster specs a Ray resource carries (RayJob/RayService embed one)."""
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "RayCluster":
        return [spec]
    if kind == "RayJob":
        return [spec["rayClusterSpec"]] if "rayClusterSpec" in spec else []
    if kind == "RayService":
        return [spec["rayClusterConfig"]] if "rayClusterConfig" in spec else []
    return []


def _groups(cluster: dict) -> Iterator[tuple[str, dict]]:
    yield "head", cluster["headGroupSpec"]
    for group in cluster.get("workerGroupSpecs") or []:
        yield group["groupName"], group


def _pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    for cluster in _cluster_specs(doc):
        for name, group in _groups(cluster):
            yield name, group["template"]
    submitter = (doc.get("spec") or {}).get("submitterPodTemplate")
    if submitter:
        yield "submitter", submitter


def _containers(doc: dict, *, ray_only: bool = False) -> Iterator[tuple[str, dict]]:
    """(where, container) for every container; ``ray_only``: only Ray node containers."""
    for where, template in _pod_templates(doc):
        if ray_only and where == "submitter":
            continue
        pod = template.get("spec") or {}
        for key in ("containers",) if ray_only else ("initContainers", "containers"):
            for c in pod.get(key) or []:
                yield f"{where}/{c.get('name')}", c


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every mapping entry, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _gpu_count(container: dict, which: str = "limits") -> int:
    return int(str(((container.get("resources") or {}).get(which) or {}).get("nvidia.com/gpu", 0)))


# --------------------------------------------------------------------------- inventory


def test_expected_resources_present():
    assert K8S.is_dir(), "k8s/ is missing"
    kinds = Counter(d["kind"] for _, d in RAY_DOCS)
    assert kinds == Counter({"RayCluster": 1, "RayJob": 2, "RayService": 1}), kinds
    for fname, doc in RAY_DOCS:
        assert doc["apiVersion"] == "ray.io/v1", f"{fname}: apiVersion {doc['apiVersion']}"
        assert doc.get("metadata", {}).get("name"), f"{fname}: metadata.name missing"
    names = [(d["kind"], d["metadata"]["name"]) for _, d in RAY_DOCS]
    assert len(names) == len(set(names)), f"duplicate resource names: {names}"
    # Anything else in k8s/ is an example Secret, nothing that could expose a port.
    for fname, doc in DOCS:
        if (fname, doc) not in RAY_DOCS:
            assert doc.get("kind") == "Secret" and fname == SECRETS_EXAMPLE, f"{fname}: unexpected {doc.get('kind')}"
    files = {f for f, _ in RAY_DOCS}
    assert {"raycluster.yaml", "rayjob-train.yaml", "rayjob-tune.yaml", "rayservice.yaml"} <= files
    assert (K8S / "README.md").is_file()


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_cluster_spec_required_fields(item):
    fname, doc = item
    clusters = _cluster_specs(doc)
    if doc["kind"] == "RayJob" and not clusters:
        assert doc["spec"].get("clusterSelector"), f"{fname}: needs rayClusterSpec or clusterSelector"
        return
    assert len(clusters) == 1, f"{fname}: no cluster spec"
    cluster = clusters[0]
    assert cluster.get("rayVersion") == RAY_VERSION, f"{fname}: rayVersion must be '{RAY_VERSION}' (a string)"
    head = cluster["headGroupSpec"]
    assert str(head.get("rayStartParams", {}).get("num-cpus")) == "0", f"{fname}: head must set num-cpus '0'"
    assert head["template"]["spec"]["containers"], f"{fname}: head has no containers"
    assert cluster.get("enableInTreeAutoscaling") is True, f"{fname}: autoscaling off"
    auto = cluster.get("autoscalerOptions") or {}
    assert isinstance(auto.get("idleTimeoutSeconds"), int) and auto["idleTimeoutSeconds"] > 0
    workers = cluster.get("workerGroupSpecs") or []
    assert workers, f"{fname}: no worker groups"
    for group in workers:
        lo, hi = group["minReplicas"], group["maxReplicas"]
        assert isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1, group["groupName"]
        assert lo <= group.get("replicas", lo) <= hi, f"{fname}/{group['groupName']}: replicas out of range"
    group_names = [g["groupName"] for g in workers]
    assert len(group_names) == len(set(group_names)), f"{fname}: duplicate groupName"


def test_raycluster_has_cpu_and_gpu_groups():
    [(fname, doc)] = [(f, d) for f, d in RAY_DOCS if d["kind"] == "RayCluster"]
    groups = doc["spec"]["workerGroupSpecs"]
    gpu = [g for g in groups if any(_gpu_count(c) for c in g["template"]["spec"]["containers"])]
    cpu = [g for g in groups if g not in gpu]
    assert gpu and cpu, f"{fname}: needs a CPU and a GPU worker group"
    # The standalone cluster's dashboard/job server binds to the pod's loopback only.
    params = doc["spec"]["headGroupSpec"]["rayStartParams"]
    assert params.get("dashboard-host") in ("127.0.0.1", "localhost"), "dashboard must bind inside the pod only"


@pytest.mark.parametrize("item", RAY_JOBS, ids=_id)
def test_rayjob_required_fields(item):
    fname, doc = item
    spec = doc["spec"]
    assert isinstance(spec.get("entrypoint"), str) and spec["entrypoint"].strip()
    assert spec.get("shutdownAfterJobFinishes") is True, f"{fname}: shutdownAfterJobFinishes"
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        assert isinstance(spec.get(key), int) and spec[key] > 0, f"{fname}: {key}"
    assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 0, f"{fname}: backoffLimit"
    assert spec.get("submissionMode") == "K8sJobMode", f"{fname}: submissionMode"
    if "runtimeEnvYAML" in spec:
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict), f"{fname}: runtimeEnvYAML"
    if "entrypointResources" in spec:
        resources = json.loads(spec["entrypointResources"])
        assert isinstance(resources, dict) and resources
        # A custom entrypoint resource must be advertised by some group or the driver never starts.
        advertised = json.dumps([g.get("rayStartParams", {}) for c in _cluster_specs(doc) for _, g in _groups(c)])
        for name in resources:
            assert name in advertised, f"{fname}: no group advertises entrypoint resource {name!r}"


# --------------------------------------------------------------------------- pods


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_every_container_has_requests_and_limits(item):
    fname, doc = item
    checked = list(_containers(doc))
    for cluster in _cluster_specs(doc):
        if cluster.get("enableInTreeAutoscaling"):
            checked.append(("autoscaler", cluster.get("autoscalerOptions") or {}))
    assert checked
    for where, c in checked:
        res = c.get("resources") or {}
        for which in ("requests", "limits"):
            for key in ("cpu", "memory"):
                assert (res.get(which) or {}).get(key), f"{fname} {where}: missing resources.{which}.{key}"


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_gpu_groups_request_gpus(item):
    fname, doc = item
    for cluster in _cluster_specs(doc):
        gpu_groups = 0
        for name, group in _groups(cluster):
            pod = group["template"]["spec"]
            gpus = [_gpu_count(c) for c in pod["containers"]]
            if "gpu" in name.lower():
                assert any(gpus), f"{fname}/{name}: GPU group without nvidia.com/gpu limits"
            if not any(gpus):
                continue
            gpu_groups += 1
            assert name != "head", f"{fname}: the head should not take a GPU"
            for c in pod["containers"]:
                requested = ((c.get("resources") or {}).get("requests") or {}).get("nvidia.com/gpu")
                if requested is not None:
                    assert int(str(requested)) == _gpu_count(c), f"{fname}/{name}: GPU request != limit"
            tolerations = pod.get("tolerations") or []
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{fname}/{name}: no GPU toleration"
            declared = group.get("rayStartParams", {}).get("num-gpus")
            if declared is not None:
                assert int(declared) == sum(gpus), f"{fname}/{name}: num-gpus != nvidia.com/gpu limit"
        assert gpu_groups, f"{fname}: no GPU worker group"


_IMAGE = re.compile(r"^(?P<repo>[a-z0-9][\w.\-/:]*?)(?::(?P<tag>[\w][\w.\-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def _image_problem(image: Any) -> str | None:
    if not isinstance(image, str) or not image:
        return "empty image"
    m = _IMAGE.match(image)
    if not m:
        return "unparseable image"
    tag, digest = m.group("tag"), m.group("digest")
    if "/" in (tag or ""):  # registry port mistaken for a tag: "host:5000/repo"
        tag = None
    if digest:
        return None
    if not tag:
        return "no tag"
    if tag == "latest" or tag.endswith("-latest") or tag in ("nightly", "master", "main"):
        return f"floating tag {tag!r}"
    return None


def test_image_pin_check_logic():
    assert _image_problem("ghcr.io/your-org/polymodal:0.1.0-gpu") is None
    assert _image_problem("rayproject/ray:2.60.0-py311-cpu") is None
    assert _image_problem("rayproject/ray@sha256:" + "a" * 64) is None
    assert _image_problem("rayproject/ray") == "no tag"
    assert _image_problem("registry:5000/ray") == "no tag"
    assert _image_problem("rayproject/ray:latest")
    assert _image_problem("rayproject/ray:nightly")


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_images_are_pinned(item):
    fname, doc = item
    images = [(path, v) for path, k, v in _walk(doc) if k == "image"]
    assert images, f"{fname}: no images"
    for path, image in images:
        problem = _image_problem(image)
        assert problem is None, f"{fname}{path}: {image!r}: {problem}"
    for _, c in _containers(doc):
        assert c.get("image"), f"{fname}: container {c.get('name')} has no image"


# --------------------------------------------------------------------------- secrets & auth


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_credentials_only_from_secrets(item):
    fname, doc = item
    for where, c in _containers(doc):
        for env in c.get("env") or []:
            name = env["name"]
            if name in S3_ENV or SENSITIVE_ENV.search(name):
                assert "value" not in env, f"{fname} {where}: {name} has a literal value"
            if name in S3_CREDENTIAL_ENV or SENSITIVE_ENV.search(name):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
                assert ref.get("name") and ref.get("key"), f"{fname} {where}: {name} must use secretKeyRef"
            if name == "RAY_AUTH_MODE":
                assert env.get("value") == "token", f"{fname} {where}: Ray auth must stay on"
    for where, c in _containers(doc, ray_only=True):
        names = {e["name"] for e in c.get("env") or []}
        missing = [n for n in S3_CREDENTIAL_ENV if n not in names]
        from_secret = any("secretRef" in s for s in c.get("envFrom") or [])
        assert not missing or from_secret, f"{fname} {where}: no S3 credentials ({missing})"


_SECRET_LOOKING = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(secret_access_key|password|auth_token|bearer)\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{16,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_no_secret_values_committed(path):
    text = path.read_text()
    for pattern in _SECRET_LOOKING:
        assert not pattern.search(text), f"{path.name}: looks like a real secret ({pattern.pattern})"
    for doc in yaml.safe_load_all(text):
        if not doc or doc.get("kind") != "Secret":
            continue
        assert path.name == SECRETS_EXAMPLE, f"{path.name}: Secrets belong in {SECRETS_EXAMPLE} only"
        assert "data" not in doc, f"{path.name}: use stringData placeholders, not base64 data"
        for key, value in (doc.get("stringData") or {}).items():
            assert "REPLACE_ME" in str(value), f"{path.name}: {doc['metadata']['name']}.{key} is not a placeholder"


def test_referenced_secrets_have_examples():
    examples = {d["metadata"]["name"]: set(d.get("stringData") or {}) for f, d in DOCS if d.get("kind") == "Secret"}
    for fname, doc in RAY_DOCS:
        for _, _, v in _walk(doc):
            if isinstance(v, dict) and "secretKeyRef" in v:
                ref = v["secretKeyRef"]
                assert ref["name"] in examples, f"{fname}: Secret {ref['name']} has no example"
                assert ref["key"] in examples[ref["name"]], f"{fname}: key {ref['key']} not in example {ref['name']}"
        for cluster in _cluster_specs(doc):
            secret = (cluster.get("authOptions") or {}).get("secretName")
            if secret:
                assert "auth_token" in examples.get(secret, set()), f"{fname}: auth Secret {secret} needs key auth_token"


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_ray_token_auth_enabled(item):
    fname, doc = item
    for cluster in _cluster_specs(doc):
        auth = cluster.get("authOptions") or {}
        by_env = all(
            any(e.get("name") == "RAY_AUTH_MODE" and e.get("value") == "token" for e in c.get("env") or [])
            for _, c in _containers({"kind": "RayCluster", "spec": cluster}, ray_only=True)
        )
        assert auth.get("mode") == "token" or by_env, f"{fname}: Ray token authentication is not enabled"


SERVING_DOCS = RAY_SERVICES + [(f, d) for f, d in RAY_DOCS if d.get("kind") == "RayCluster"]


@pytest.mark.parametrize("item", SERVING_DOCS, ids=_id)
def test_serve_proxies_load_the_proxy_guard(item):
    """Every Ray container of a cluster that may serve sets the proxy callback to polymodal's guard."""
    from ray._common.utils import import_attr

    from polymodal.serving import proxy

    fname, doc = item
    for where, container in _containers(doc, ray_only=True):
        env = {e.get("name"): e.get("value") for e in container.get("env") or []}
        assert env.get(proxy.PROXY_CALLBACK_ENV) == proxy.PROXY_CALLBACK, f"{fname}: {where}"
    assert import_attr(proxy.PROXY_CALLBACK) is proxy.middlewares


# --------------------------------------------------------------------------- exposure


def _service_exposes_ray_ports(service_spec: dict) -> bool:
    if (service_spec or {}).get("type") not in ("LoadBalancer", "NodePort"):
        return False
    ports = service_spec.get("ports")
    if not ports:  # operator fills in the Ray ports
        return True
    return any(p.get("port") in RAY_PORTS or p.get("targetPort") in RAY_PORTS for p in ports)


def test_exposure_check_logic():
    assert _service_exposes_ray_ports({"type": "LoadBalancer", "ports": [{"port": 8265}]})
    assert _service_exposes_ray_ports({"type": "NodePort"})
    assert not _service_exposes_ray_ports({"type": "ClusterIP", "ports": [{"port": 8265}]})
    assert not _service_exposes_ray_ports({"type": "LoadBalancer", "ports": [{"port": 8000}]})


@pytest.mark.parametrize("item", DOCS, ids=_id)
def test_ray_ports_not_exposed(item):
    fname, doc = item
    if doc.get("kind") == "Service":
        assert not _service_exposes_ray_ports(doc.get("spec") or {}), f"{fname}: Service exposes Ray ports"
    for cluster in _cluster_specs(doc):
        head = cluster["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{fname}: head serviceType must be ClusterIP"
        assert not head.get("enableIngress"), f"{fname}: no Ingress to the head"
        assert not _service_exposes_ray_ports((head.get("headService") or {}).get("spec") or {})
        for _, group in _groups(cluster):
            for c in group["template"]["spec"]["containers"]:
                for p in c.get("ports") or []:
                    assert "hostPort" not in p, f"{fname}: hostPort on {c['name']}"
            assert not group["template"]["spec"].get("hostNetwork"), f"{fname}: hostNetwork"
    if doc.get("kind") == "RayService":
        svc = (doc["spec"].get("serveService") or {}).get("spec") or {}
        assert svc.get("type", "ClusterIP") == "ClusterIP", f"{fname}: serve Service must be ClusterIP"


# --------------------------------------------------------------------------- repo references


_JOB_SCRIPT = re.compile(r"(?:^|\s)(?:\S*/)?(jobs/[\w\-]+\.py)\b")
_SPACE_FLAG = re.compile(r"--space[=\s]+(\S+)")


def _entrypoint_refs(entrypoint: str) -> tuple[list[str], list[str]]:
    """(job scripts, --space files) an entrypoint names, as repo-relative paths."""
    return _JOB_SCRIPT.findall(entrypoint), _SPACE_FLAG.findall(entrypoint)


def _missing_refs(entrypoint: str, root: Path) -> list[str]:
    scripts, spaces = _entrypoint_refs(entrypoint)
    return [p for p in [*scripts, *spaces] if not p.startswith("s3://") and not (root / p).is_file()]


def test_entrypoint_reference_logic(tmp_path):
    ep = "python jobs/tune.py --space tune_spaces/wander.yaml --config s3://b/wander.yaml --set x=1"
    assert _entrypoint_refs(ep) == (["jobs/tune.py"], ["tune_spaces/wander.yaml"])
    assert _missing_refs(ep, tmp_path) == ["jobs/tune.py", "tune_spaces/wander.yaml"]
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "tune.py").write_text("")
    (tmp_path / "tune_spaces").mkdir()
    (tmp_path / "tune_spaces" / "wander.yaml").write_text("{}")
    assert _missing_refs(ep, tmp_path) == []
    assert _entrypoint_refs("python /home/ray/polymodal/jobs/train.py --config c")[0] == ["jobs/train.py"]


def _ref_id(item: tuple[str, dict]) -> str:
    return f"{item[1]['metadata']['name']}"


@pytest.mark.parametrize("item", RAY_JOBS, ids=_ref_id)
def test_rayjob_entrypoint_script_exists(item):
    fname, doc = item
    entrypoint = doc["spec"]["entrypoint"]
    scripts, spaces = _entrypoint_refs(entrypoint)
    assert scripts, f"{fname}: entrypoint names no jobs/*.py script: {entrypoint!r}"
    assert "--config" in entrypoint, f"{fname}: entrypoint has no --config"
    if "jobs/tune.py" in scripts:
        assert spaces, f"{fname}: tune entrypoint has no --space"
    missing = _missing_refs(entrypoint, REPO)
    assert not missing, f"{fname}: entrypoint refers to files missing from the repo: {missing}"


def _serve_config(doc: dict) -> dict:
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert isinstance(config, dict) and isinstance(config.get("applications"), list) and config["applications"]
    return config


def _module_file(import_path: str, root: Path) -> Path:
    module = import_path.split(":", 1)[0] if ":" in import_path else import_path.rsplit(".", 1)[0]
    return root / (module.replace(".", "/") + ".py")


def test_module_file_logic(tmp_path):
    assert _module_file("serve.wander_app:app_builder", tmp_path) == tmp_path / "serve" / "wander_app.py"
    assert _module_file("serve.wander_app.app_builder", tmp_path) == tmp_path / "serve" / "wander_app.py"


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_serve_config(item):
    fname, doc = item
    config = _serve_config(doc)
    [app] = [a for a in config["applications"] if a.get("name") == "wander"]
    assert app["import_path"] == "serve.wander_app:app_builder"
    assert app.get("route_prefix") == "/wander"
    args = app.get("args") or {}
    assert str(args.get("checkpoint", "")).startswith("s3://"), f"{fname}: checkpoint must be an s3:// URI"
    assert args.get("token_env") == "POLYMODAL_SERVE_TOKEN"
    for dep in app.get("deployments") or []:
        for key in ("name", "autoscaling_config", "max_ongoing_requests", "max_queued_requests"):
            assert key in dep, f"{fname}: deployment {dep.get('name')} lacks {key}"
        auto = dep["autoscaling_config"]
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
        assert "num_replicas" not in dep or dep["num_replicas"] == "auto"
    assert app.get("deployments"), f"{fname}: no deployments configured"
    # The token env the app reads is provided, from a Secret, on every Ray container.
    for where, c in _containers(doc, ray_only=True):
        env = {e["name"]: e for e in c.get("env") or []}
        assert "secretKeyRef" in (env.get("POLYMODAL_SERVE_TOKEN", {}).get("valueFrom") or {}), where


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_import_path_exists(item):
    fname, doc = item
    for app in _serve_config(doc)["applications"]:
        module = _module_file(app["import_path"], REPO)
        assert module.is_file(), f"{fname}: import_path {app['import_path']} -> {module.relative_to(REPO)} missing"
        assert (module.parent / "__init__.py").is_file(), f"{module.parent.relative_to(REPO)}/__init__.py missing"


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_serve_config_passes_strict_check(item, tmp_path):
    """Same strict check as serve/config.yaml: unknown keys, import path, ServeArgs."""
    if not _module_file("serve.wander_app:app_builder", REPO).is_file():
        pytest.skip("serve/wander_app.py not present yet")
    try:
        from polymodal.serving.config_check import check_serve_config
    except ImportError as exc:  # pragma: no cover - the checker ships with polymodal
        pytest.skip(f"polymodal.serving.config_check unavailable: {exc}")
    path = tmp_path / "serve_v2.yaml"
    path.write_text(item[1]["spec"]["serveConfigV2"])
    assert check_serve_config(path, root=REPO) == []


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_matches_serve_config_yaml(item):
    """The in-cluster Serve config and serve/config.yaml describe the same app."""
    local = REPO / "serve" / "config.yaml"
    if not local.is_file():
        pytest.skip("serve/config.yaml not present")
    ours = {a["name"]: a for a in _serve_config(item[1])["applications"]}
    theirs = {a["name"]: a for a in yaml.safe_load(local.read_text())["applications"]}
    assert set(ours) == set(theirs)
    for name, app in ours.items():
        for key in ("import_path", "route_prefix"):
            assert app.get(key) == theirs[name].get(key), f"{name}.{key} differs from serve/config.yaml"
        known = {d["name"] for d in theirs[name].get("deployments") or []}
        if known:
            unknown = {d["name"] for d in app.get("deployments") or []} - known
            assert not unknown, f"{name}: deployments {unknown} not in serve/config.yaml ({known})"


# --------------------------------------------------------------------------- CRD schemas


def _strict(node: Any, *, open_: bool = False) -> Any:
    """Turn a CRD structural schema into a strict JSON Schema (draft 4 semantics)."""
    if isinstance(node, list):
        return [_strict(n, open_=open_) for n in node]
    if not isinstance(node, dict):
        return node
    preserve = open_ or node.get("x-kubernetes-preserve-unknown-fields") is True
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        for key in ("type", "format", "anyOf", "oneOf"):
            out.pop(key, None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {k: _strict(v, open_=preserve) for k, v in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), (dict, list)):
            out[key] = _strict(out[key], open_=preserve)
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_strict(n, open_=preserve) for n in out[key]]
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def _validator(kind: str):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}")
    with path.open() as f:
        crd = yaml.load(f, Loader=_Loader)
    assert crd["spec"]["names"]["kind"] == kind
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _errors(doc: dict) -> list[str]:
    validator = _validator(doc["kind"])
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_manifest_matches_kuberay_crd(item):
    fname, doc = item
    errors = _errors(doc)
    assert not errors, f"{fname} violates the KubeRay v1.7.0 CRD:\n" + "\n".join(errors[:20])


def _raycluster() -> dict:
    [doc] = [d for _, d in RAY_DOCS if d["kind"] == "RayCluster"]
    return copy.deepcopy(doc)


def test_crd_validation_rejects_misspelled_field():
    doc = _raycluster()
    doc["spec"]["workerGroupSpec"] = doc["spec"].pop("workerGroupSpecs")
    errors = _errors(doc)
    assert any("workerGroupSpec" in e for e in errors), errors


def test_crd_validation_rejects_wrong_type():
    doc = _raycluster()
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("workerGroupSpecs/0/replicas" in e for e in _errors(doc))


def test_crd_validation_rejects_nested_typo_and_missing_required():
    doc = _raycluster()
    container = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")  # typo deep inside the pod template
    del doc["spec"]["workerGroupSpecs"][0]["groupName"]
    errors = _errors(doc)
    assert any("containers/0" in e and "resource" in e for e in errors), errors
    assert any("groupName" in e for e in errors), errors


def test_crd_validation_int_or_string():
    doc = _raycluster()
    limits = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits["cpu"] = 4  # quantities are int-or-string
    assert not _errors(doc)
    limits["cpu"] = [4]
    assert _errors(doc)
