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
import itertools
import json
import re
import shlex
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
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


def _systems() -> set[str]:
    """The installed systems: the prefixes of the registered task names."""
    from polymodal.registry import registry

    return {name.split(".", 1)[0] for name in registry().names("task")}


def test_expected_resources_present():
    assert K8S.is_dir(), "k8s/ is missing"
    kinds = Counter(d["kind"] for _, d in RAY_DOCS)
    assert kinds["RayCluster"] == 1 and kinds["RayService"] == 1, kinds
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
    # one training RayJob per system, beside the cluster, the sweep and the (multi-app) service
    per_system = {f"rayjob-{system}.yaml" for system in _systems()}
    assert {"raycluster.yaml", "rayjob-tune.yaml", "rayservice.yaml"} | per_system <= files, files
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


_JOB_SCRIPT = re.compile(r"^(?:\S*/)?jobs/(train|tune|evaluate)\.py$")
#: what each step of an entrypoint may be: polymodal's CLI or a jobs/*.py wrapper of it
_READERS = {"train", "tune", "evaluate"}
_STAGERS = {("data", "synth"), ("data", "import")}


@dataclass
class Step:
    """One command of an entrypoint (``a && b && c``)."""

    command: str  # "train", "tune", "evaluate", "data synth", "data import", ...
    options: dict[str, list[str]]
    script: str | None = None  # jobs/<x>.py when run through a wrapper

    def one(self, flag: str) -> str | None:
        values = self.options.get(flag) or []
        return values[-1] if values else None


def _steps(entrypoint: str) -> list[Step]:
    """The commands of an entrypoint, in order, with their ``--flag value`` options."""
    steps = []
    for part in entrypoint.split("&&"):
        argv = shlex.split(part)
        script = None
        if argv[:1] == ["polymodal"]:
            words = argv[1:]
        elif len(argv) >= 2 and argv[0].startswith("python") and _JOB_SCRIPT.match(argv[1]):
            script = argv[1][argv[1].index("jobs/"):]
            words = [_JOB_SCRIPT.match(argv[1]).group(1), *argv[2:]]
        else:
            raise AssertionError(f"entrypoint step is neither polymodal nor jobs/*.py: {part.strip()!r}")
        command = [w for w in itertools.takewhile(lambda w: not w.startswith("-"), words)]
        options: dict[str, list[str]] = {}
        rest = words[len(command):]
        for flag, value in zip(rest, rest[1:]):
            if flag.startswith("--") and not value.startswith("--"):
                options.setdefault(flag, []).append(value)
        steps.append(Step(" ".join(command), options, script))
    return steps


def _s3_uris(node: Any) -> Iterator[str]:
    for _, _, v in _walk({"": node}):
        if isinstance(v, str) and v.startswith("s3://"):
            yield v


def _under(uri: str, prefixes: list[str]) -> bool:
    return any(uri == p or uri.startswith(p.rstrip("/") + "/") for p in prefixes)


def _check_job(doc: dict, root: Path) -> tuple[list[str], list[str], list[str]]:
    """Check one RayJob's entrypoint; (problems, the prefixes it stages, the run URIs it writes).

    Every step reads only what the repo (the image's working_dir) has or an earlier step of the
    same entrypoint staged: its --config and --space files exist, and every s3:// URI of its
    config (data, backbones, vectors) lies under the --out of an earlier ``data synth`` or
    ``data import``. On a cluster with GPU workers the config trains with ``scaling.use_gpu``
    on no more workers than the GPU groups can hold."""
    from polymodal.config import load_config

    problems, staged, runs = [], [], []
    gpus = sum(max(_gpu_count(c) for c in g["template"]["spec"]["containers"]) * g["maxReplicas"]
               for cluster in _cluster_specs(doc) for name, g in _groups(cluster) if name != "head")
    for step in _steps(doc["spec"]["entrypoint"]):
        if step.script and not (root / step.script).is_file():
            problems.append(f"{step.script} is not in the repo")
        if tuple(step.command.split()) in _STAGERS:
            out = step.one("--out")
            if not out:
                problems.append(f"{step.command} without --out")
            else:
                staged.append(out)
            continue
        if step.command not in _READERS:
            continue
        config = step.one("--config")
        if not config or config.startswith("s3://") or not (root / config).is_file():
            problems.append(f"{step.command}: --config {config} is not a file of the repo")
            continue
        space = step.one("--space")
        if step.command == "tune" and (not space or not (root / space).is_file()):
            problems.append(f"tune: --space {space} is not a file of the repo")
        cfg = load_config(str(root / config), step.options.get("--set", []))
        reads = [u for u in _s3_uris(cfg.model_dump(exclude={"storage_path"})) if not _under(u, [cfg.storage_path])]
        for uri in reads:
            if not _under(uri, staged):
                problems.append(f"{step.command} {config} reads {uri}, which no earlier step stages")
        if not staged:
            problems.append(f"{step.command} {config} runs before any data step")
        if gpus:
            if cfg.scaling.use_gpu is not True:
                problems.append(f"{step.command} {config}: GPU workers, but scaling.use_gpu is not true")
            if cfg.scaling.num_workers > gpus:
                problems.append(f"{step.command} {config}: {cfg.scaling.num_workers} workers > {gpus} GPUs")
        if step.command == "train":
            runs.append(cfg.run_uri)
    return problems, staged, runs


def test_entrypoint_check_logic(tmp_path):
    (tmp_path / "jobs" / "configs").mkdir(parents=True)
    shutil.copy(REPO / "jobs" / "configs" / "wander_tiny.yaml", tmp_path / "jobs" / "configs" / "w.yaml")
    cpu_only = {"kind": "RayJob", "spec": {"rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": [{}]}}}}}}
    gpu_group = {"groupName": "gpu", "maxReplicas": 2, "template": {"spec": {"containers": [
        {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}
    with_gpu = copy.deepcopy(cpu_only)
    with_gpu["spec"]["rayClusterSpec"]["workerGroupSpecs"] = [gpu_group]

    def check(doc: dict, entrypoint: str) -> tuple[list[str], list[str], list[str]]:
        doc = copy.deepcopy(doc)
        doc["spec"]["entrypoint"] = entrypoint
        return _check_job(doc, tmp_path)

    synth = "polymodal data synth --task wander.classification --out s3://polymodal/demo/wander"
    good = f"{synth} && polymodal train --config jobs/configs/w.yaml"
    problems, staged, runs = check(cpu_only, good)
    assert (problems, staged, runs) == ([], ["s3://polymodal/demo/wander"], ["s3://polymodal/runs/wander-tiny"])
    # no data step: every read is reported
    problems, _, _ = check(cpu_only, "polymodal train --config jobs/configs/w.yaml")
    assert any("s3://polymodal/demo/wander/backbone" in p and "no earlier step" in p for p in problems), problems
    # a prefix that only looks alike is not the staged folder
    problems, _, _ = check(cpu_only, good.replace("demo/wander ", "demo/wand "))
    assert any("no earlier step" in p for p in problems), problems
    # GPU workers need use_gpu (the shipped tiny configs say false) and enough GPUs
    problems, _, _ = check(with_gpu, good)
    assert any("use_gpu" in p for p in problems), problems
    assert check(with_gpu, good + " --set scaling.use_gpu=true")[0] == []
    problems, _, _ = check(with_gpu, good + " --set scaling.use_gpu=true --set scaling.num_workers=3")
    assert any("3 workers > 2 GPUs" in p for p in problems), problems
    # configs and scripts must ship in the repo; tune needs its space
    problems, _, _ = check(cpu_only, f"{synth} && python jobs/tune.py --config s3://b/w.yaml")
    assert any("jobs/tune.py" in p for p in problems) and any("--config s3://b/w.yaml" in p for p in problems)
    problems, _, _ = check(cpu_only, f"{synth} && polymodal tune --config jobs/configs/w.yaml --space nope.yaml")
    assert any("--space nope.yaml" in p for p in problems), problems
    with pytest.raises(AssertionError, match="neither polymodal"):
        check(cpu_only, f"{synth} && aws s3 cp x s3://polymodal/x")


def _ref_id(item: tuple[str, dict]) -> str:
    return f"{item[1]['metadata']['name']}"


@pytest.mark.parametrize("item", RAY_JOBS, ids=_ref_id)
def test_rayjob_stages_its_data_then_trains(item):
    """A fresh cluster runs every RayJob as written: each reads only what it stages first."""
    fname, doc = item
    problems, staged, _ = _check_job(doc, REPO)
    assert not problems, f"{fname}: " + "; ".join(problems)
    assert staged, f"{fname}: no data step"
    assert any(s.command in _READERS for s in _steps(doc["spec"]["entrypoint"])), f"{fname}: trains nothing"


def test_every_system_has_a_training_rayjob():
    jobs = {f: d for f, d in RAY_JOBS}
    for system in _systems():
        doc = jobs.get(f"rayjob-{system}.yaml")
        assert doc, f"no k8s/rayjob-{system}.yaml"
        trained = [s for s in _steps(doc["spec"]["entrypoint"]) if s.command == "train"]
        assert trained, f"rayjob-{system}.yaml trains nothing"
        from polymodal.config import load_config

        for step in trained:
            cfg = load_config(str(REPO / step.one("--config")), step.options.get("--set", []))
            assert cfg.task.split(".")[0] == system, f"rayjob-{system}.yaml trains {cfg.task}"


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


def _registered_app(name: str) -> dict:
    """The application ``name`` of its registered serve/*.yaml."""
    from polymodal.registry import registry

    entry = registry().get("serve app", name)
    [app] = [a for a in yaml.safe_load((REPO / "serve" / entry.config).read_text())["applications"]
             if a["name"] == name]
    return app


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_serves_every_registered_app(item):
    """One multi-application serveConfigV2 with each system's apps as its serve/*.yaml has them."""
    from polymodal.registry import registry

    fname, doc = item
    apps = {a["name"]: a for a in _serve_config(doc)["applications"]}
    assert set(apps) == set(registry().names("serve app")), f"{fname}: apps {sorted(apps)}"
    for name, app in apps.items():
        theirs = _registered_app(name)
        for key in ("import_path", "route_prefix", "args"):
            assert app.get(key) == theirs.get(key), f"{fname}: {name}.{key} differs from serve/*.yaml"
        known = {d["name"] for d in theirs.get("deployments") or []}
        assert app.get("deployments"), f"{fname}: {name}: no deployments configured"
        for dep in app["deployments"]:
            assert not known or dep["name"] in known, f"{fname}: {name}: deployment {dep['name']} not in {known}"
            for key in ("autoscaling_config", "max_ongoing_requests", "max_queued_requests",
                        "health_check_period_s", "health_check_timeout_s"):
                assert key in dep, f"{fname}: {name}/{dep['name']} lacks {key}"
            auto = dep["autoscaling_config"]
            assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
            assert "num_replicas" not in dep or dep["num_replicas"] == "auto"
        assert str(app["args"].get("checkpoint", "")).startswith("s3://"), f"{fname}: {name}: checkpoint URI"
        assert app["args"].get("token_env") == "POLYMODAL_SERVE_TOKEN"
    # The token env the apps read is provided, from a Secret, on every Ray container.
    for where, c in _containers(doc, ray_only=True):
        env = {e["name"]: e for e in c.get("env") or []}
        assert "secretKeyRef" in (env.get("POLYMODAL_SERVE_TOKEN", {}).get("valueFrom") or {}), where


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_reads_what_the_rayjobs_write(item):
    """Every checkpoint the service loads is a run a RayJob in k8s/ trains; every other s3:// arg
    (indexes) lies under data a RayJob stages."""
    fname, doc = item
    staged, runs = [], []
    for _, job in RAY_JOBS:
        _, job_staged, job_runs = _check_job(job, REPO)
        staged += job_staged
        runs += job_runs
    for app in _serve_config(doc)["applications"]:
        args = dict(app.get("args") or {})
        assert args.pop("checkpoint") in runs, f"{fname}: {app['name']} serves a run no RayJob trains ({runs})"
        for uri in _s3_uris(args):
            assert _under(uri, staged), f"{fname}: {app['name']} reads {uri}, which no RayJob stages"


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_health_and_upgrades(item):
    fname, doc = item
    spec = doc["spec"]
    # NewCluster: a rayClusterConfig change (a new image) starts a new cluster and moves
    # traffic once its apps run; None would leave the old cluster serving the old image.
    assert (spec.get("upgradeStrategy") or {}).get("type") in ("NewCluster", "NewClusterWithIncrementalUpgrade")
    # KubeRay >= 1.1 ignores these (health moved to the pods' readiness probes): setting them
    # would promise a behaviour the operator no longer has.
    for key in ("serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"):
        assert key not in spec, f"{fname}: {key} is ignored by KubeRay 1.7"
    for app in _serve_config(doc)["applications"]:
        for dep in app["deployments"]:
            assert 0 < dep["health_check_period_s"] <= dep["health_check_timeout_s"], f"{app['name']}"
    # KubeRay's own readiness probe (the Serve proxy's /-/healthz) stays: no override replaces it.
    for where, c in _containers(doc, ray_only=True):
        assert "readinessProbe" not in c and "livenessProbe" not in c, f"{fname}: {where} overrides KubeRay's probes"


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_import_path_exists(item):
    fname, doc = item
    for app in _serve_config(doc)["applications"]:
        module = _module_file(app["import_path"], REPO)
        assert module.is_file(), f"{fname}: import_path {app['import_path']} -> {module.relative_to(REPO)} missing"
        assert (module.parent / "__init__.py").is_file(), f"{module.parent.relative_to(REPO)}/__init__.py missing"


@pytest.mark.parametrize("item", RAY_SERVICES, ids=_ref_id)
def test_rayservice_serve_config_passes_strict_check(item, tmp_path):
    """Same strict check as serve/*.yaml: unknown keys, import path, ServeArgs."""
    from polymodal.serving.config_check import check_serve_config

    path = tmp_path / "serve_v2.yaml"
    path.write_text(item[1]["spec"]["serveConfigV2"])
    assert check_serve_config(path, root=REPO) == []


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
