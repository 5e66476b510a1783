"""Static checks of the container image: ``docker/Dockerfile``, ``.dockerignore``, the lock filter
the build uses, and that every Ray container in ``k8s/`` runs an image built from the Dockerfile's
targets. Pure file parsing, no container engine (see k8s/README.md for the recorded test build).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
#: where the manifests say the images live: <IMAGE_REPO>:<version>-<target>
IMAGE_REPO = "ghcr.io/your-org/polymodal"
#: the lock, optional in the build context (COPY's glob matches nothing without it)
OPTIONAL_SOURCES = {"requirements.loc[k]"}

sys.path.insert(0, str(REPO / "docker"))
import lock_pins  # noqa: E402  (docker/ is not a package: the build runs the file as a script)


# --------------------------------------------------------------------------- Dockerfile parsing


@dataclass
class Stage:
    base: str
    name: str | None
    #: (instruction, arguments) in order, continuation lines joined
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


def _instructions(text: str) -> list[tuple[str, str]]:
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        ins, _, args = buf.partition(" ")
        out.append((ins.upper(), " ".join(args.split())))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def _parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins, args in _instructions(text):
        if ins == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert ins == "ARG", f"{ins} before the first FROM"
            key, _, value = args.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((ins, args))
    return global_args, stages


GLOBAL_ARGS, STAGES = _parse(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES if s.name}


def _mount_sources(stage: Stage) -> list[str]:
    return [m for run in stage.all("RUN") for m in re.findall(r"--mount=\S*from=([\w.-]+)", run)]


def _targets() -> set[str]:
    """Stages no other stage builds on or mounts from: what ``--target`` is meant for."""
    used = {s.base for s in STAGES} | {m for s in STAGES for m in _mount_sources(s)}
    return {s.name for s in STAGES if s.name and s.name not in used}


def _expand(value: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GLOBAL_ARGS.get(m.group(1), m.group(0)), value)


def _ray_version() -> str:
    versions = {d["spec"].get("rayVersion") or (d["spec"].get("rayClusterSpec") or d["spec"].get("rayClusterConfig"))["rayVersion"]
                for d in _k8s_docs()}
    assert len(versions) == 1, versions
    return versions.pop()


def test_parse_logic():
    args, stages = _parse('ARG A="x y"\n# c\nFROM ${A} AS one\nRUN a \\\n  # inner\n  b\nFROM one AS two\nUSER ray\n')
    assert args == {"A": "x y"}
    assert [(s.base, s.name) for s in stages] == [("${A}", "one"), ("one", "two")]
    assert stages[0].instructions == [("RUN", "a b")]


# --------------------------------------------------------------------------- the Dockerfile


def test_cpu_and_gpu_targets_on_the_matching_ray_images():
    assert _targets() == {"cpu", "gpu"}
    ray = _ray_version()
    cpu, gpu = _expand(BY_NAME["cpu"].base), _expand(BY_NAME["gpu"].base)
    assert cpu == f"rayproject/ray:{ray}-py311-cpu", cpu
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray)}-py311-cu12\d+", gpu), gpu
    # the bases are build arguments, so another registry or a local base can stand in
    assert BY_NAME["cpu"].base.startswith("${") and BY_NAME["gpu"].base.startswith("${")


def test_gpu_target_installs_the_cuda_torch_build():
    cuda = re.search(r"cu(\d+)$", _expand(BY_NAME["gpu"].base)).group(1)
    assert GLOBAL_ARGS["GPU_TORCH_PIP_ARGS"] == f"--index-url https://download.pytorch.org/whl/cu{cuda}"
    assert GLOBAL_ARGS["CPU_TORCH_PIP_ARGS"] == "--index-url https://download.pytorch.org/whl/cpu"
    # each target installs the wheels built with its own torch arguments
    assert _mount_sources(BY_NAME["gpu"]) == ["gpu-wheels"] and _mount_sources(BY_NAME["cpu"]) == ["cpu-wheels"]
    assert "${GPU_TORCH_PIP_ARGS}" in " ".join(BY_NAME["gpu-wheels"].all("RUN"))
    assert "${CPU_TORCH_PIP_ARGS}" in " ".join(BY_NAME["cpu-wheels"].all("RUN"))
    torch = [d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
             if re.match(r"torch\b", d)]
    assert torch and all(re.search(r"[<>=~!]", d) for d in torch)
    version = GLOBAL_ARGS["TORCH_VERSION"]
    from packaging.specifiers import SpecifierSet

    assert all(version in SpecifierSet(re.sub(r"^torch\s*", "", d)) for d in torch), (version, torch)


_EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})


def test_targets_install_the_package_with_its_extras():
    cpu, gpu = set(GLOBAL_ARGS["CPU_EXTRAS"].split(",")), set(GLOBAL_ARGS["GPU_EXTRAS"].split(","))
    assert {"tune", "video", "fmri"} <= cpu and cpu | {"gpu"} == gpu
    # pip only warns about an extra the package lacks: check them here
    assert cpu | gpu <= set(_EXTRAS), f"extras missing from pyproject.toml: {(cpu | gpu) - set(_EXTRAS)}"
    assert "${CPU_EXTRAS}" in " ".join(BY_NAME["cpu"].all("RUN"))
    assert "${GPU_EXTRAS}" in " ".join(BY_NAME["gpu"].all("RUN"))


def test_installs_from_the_wheel_folder_only():
    install = (REPO / "docker" / "install.sh").read_text()
    assert re.search(r"pip install --no-cache-dir --no-index --find-links", install)
    assert '"polymodal[$EXTRAS]"' in install and '"torch==$TORCH_VERSION"' in install
    assert '-c "$wheels/pins.txt"' in install
    wheelhouse = (REPO / "docker" / "wheelhouse.sh").read_text()
    assert "requirements.lock" in wheelhouse and "lock_pins.py" in wheelhouse


def test_no_build_leftovers_in_the_targets():
    for name in ("cpu", "gpu"):
        stage = BY_NAME[name]
        # wheels arrive through a bind mount of the build stage, never a layer of their own
        assert not any("--from" in c for c in stage.all("COPY")), f"{name}: COPY --from leaves files in a layer"
        assert not stage.all("ADD"), f"{name}: ADD"
        runs = stage.all("RUN")
        assert any("--mount=type=bind" in r and "install.sh" in r for r in runs), name
        for run in runs:
            assert "pip install" not in run or "--no-cache-dir" in run, f"{name}: pip cache kept: {run}"
        copied = [c.split()[-2] for c in stage.all("COPY")]
        assert copied == ["jobs/", "serve/", "tune_spaces/"], copied


def _user(stage: Stage) -> str | None:
    """The user a stage ends as: its last USER, else that of the stage it builds on."""
    users = stage.all("USER")
    if users:
        return users[-1].split(":")[0]
    return _user(BY_NAME[stage.base]) if stage.base in BY_NAME else None


def test_every_stage_runs_as_a_non_root_user():
    for stage in STAGES:
        user = _user(stage)
        assert user, f"stage {stage.name} does not set its user (the base's may be root)"
        assert user not in ("root", "0"), f"stage {stage.name} ends as root"
    # numeric, so a pod's `runAsNonRoot: true` can verify it: the rayproject images' `ray` (1000:100)
    assert _user(BY_NAME["cpu"]) == _user(BY_NAME["gpu"]) == "1000"
    for stage in STAGES:
        for copy in stage.all("COPY"):
            if "--from" not in copy:
                assert "--chown=1000:100" in copy, f"{stage.name}: COPY without --chown: {copy}"


def test_cpu_target_can_compile_deepspeed_ops():
    """DeepSpeed builds its CPU ops (cpu_adam) with g++ on first use; the rayproject CPU images
    remove g++, so the cpu target installs it as root (uid 0), then drops back to the ray user."""
    stage = BY_NAME["cpu"]
    [apt] = [r for r in stage.all("RUN") if "apt-get" in r]
    assert "install -y --no-install-recommends g++" in apt and apt.endswith("rm -rf /var/lib/apt/lists/*")
    order = [(ins, args) for ins, args in stage.instructions if ins == "USER" or (ins == "RUN" and "apt-get" in args)]
    assert order == [("USER", "0"), ("RUN", apt), ("USER", "1000:100")], order


def test_image_has_the_repo_where_the_manifests_expect_it():
    for name in ("cpu", "gpu"):
        stage = BY_NAME[name]
        assert stage.all("WORKDIR")[-1] == "/home/ray/polymodal"
        assert "PYTHONPATH=/home/ray/polymodal" in stage.all("ENV")
    for doc in _k8s_docs():
        runtime_env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML") or "{}") or {}
        assert runtime_env.get("working_dir", "/home/ray/polymodal") == "/home/ray/polymodal"


# --------------------------------------------------------------------------- build context


def _ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(exclude?, regex) per .dockerignore line: Go filepath.Match with ``**``, ``!`` re-includes."""
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:] if include else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                regex += ".*"
                i += 2
                if pattern.startswith("/", i):
                    regex += "/?"
                    i += 1
                continue
            ch = pattern[i]
            regex += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
            i += 1
        out.append((not include, re.compile(regex)))
    return out


def _excluded(path: str, patterns: list[tuple[bool, re.Pattern]] | None = None) -> bool:
    """Whether the build context leaves ``path`` out: the last pattern that matches the path or a
    folder above it decides."""
    patterns = _ignore_patterns() if patterns is None else patterns
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for exclude, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = exclude
    return verdict


def test_dockerignore_logic():
    patterns = [(True, re.compile("[^/]*")), (False, re.compile(re.escape("platform"))),
                (True, re.compile(".*/?__pycache__"))]
    assert _excluded(".venv/bin/python", patterns) and _excluded("tests/x.py", patterns)
    assert not _excluded("platform/polymodal/cli.py", patterns)
    assert _excluded("platform/polymodal/__pycache__/cli.pyc", patterns)


def _copy_sources(stage: Stage) -> list[str]:
    sources = []
    for copy in stage.all("COPY"):
        words = [w for w in copy.split() if not w.startswith("--")]
        if "--from" not in copy:
            sources += words[:-1]
    return sources


_TRACKED = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())


def test_copy_sources_exist_and_are_in_the_build_context():
    for stage in STAGES:
        for source in _copy_sources(stage):
            matches = sorted(REPO.glob(source.rstrip("/")))
            if source in OPTIONAL_SOURCES:
                continue
            assert matches, f"COPY {source}: nothing in the repo"
            for match in matches:
                files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
                # what a checkout holds: local build output (egg-info, caches) is the builder's own
                rel = [r for r in (str(p.relative_to(REPO)) for p in files) if r in _TRACKED]
                assert rel, f"COPY {source}: empty"
                excluded = [r for r in rel if _excluded(r)]
                assert not excluded, f"COPY {source}: .dockerignore leaves out {excluded[:5]}"
    # the optional lock is let into the context when it exists
    assert not _excluded("requirements.lock")
    # the scripts the RUN lines call are in the context
    for script in ("docker/wheelhouse.sh", "docker/install.sh", "docker/lock_pins.py"):
        assert (REPO / script).is_file() and not _excluded(script), script


def test_build_context_leaves_out_local_state():
    for path in (".venv/bin/python", ".git/HEAD", "runs/x/summary.json", "demo_out/report.md", "tests/conftest.py",
                 "bench/ridge.py", "platform/polymodal/__pycache__/cli.cpython-311.pyc", "polymodal.egg-info/PKG-INFO"):
        assert _excluded(path), f"{path} would be sent to the build"


# --------------------------------------------------------------------------- lock filter


LOCK = """\
#
# This file is autogenerated by pip-compile with Python 3.11
#
--index-url https://pypi.org/simple
--extra-index-url https://download.pytorch.org/whl/cpu

aiobotocore==3.10.0 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via s3fs
-e file:///work/polymodal
nvidia-cublas-cu12==12.8.4.1 ; platform_system == "Linux"
    # via torch
Pillow==10.4.0    # via polymodal
polymodal==0.1.0
pytorch-triton-rocm==3.0.0
torch==2.13.0+cpu \\
    --hash=sha256:cccc
triton==3.5.0 ; platform_machine == "x86_64"
tzdata==2025.2 ; sys_platform == "win32"
"""


def test_lock_pins_keep_exact_pins_and_drop_the_torch_family():
    assert lock_pins.pins(LOCK.splitlines(keepends=True)) == [
        "aiobotocore==3.10.0",
        "Pillow==10.4.0",
        'tzdata==2025.2 ; sys_platform == "win32"',
    ]


def test_lock_pins_of_constraints_txt(tmp_path, capsys):
    assert lock_pins.main([str(REPO / "constraints.txt")]) == 0
    pins = capsys.readouterr().out.split()
    assert "ray==2.60.0" in pins and not any(p.startswith("torch") for p in pins)
    assert lock_pins.main([]) == 2


# --------------------------------------------------------------------------- k8s images


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((REPO / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and str(d.get("apiVersion", "")).startswith("ray.io/")]
    return docs


def _images(doc: dict) -> list[tuple[str, str, int]]:
    """(where, image, GPUs) of every container of a Ray resource, the submitter and autoscaler too."""
    spec = doc["spec"]
    cluster = spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs") or []]
    out = []
    for name, group in groups:
        pod = group["template"]["spec"]
        for c in (pod.get("initContainers") or []) + pod["containers"]:
            gpus = int(str(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0)))
            out.append((f"{name}/{c['name']}", c["image"], gpus))
    for c in ((spec.get("submitterPodTemplate") or {}).get("spec") or {}).get("containers") or []:
        out.append((f"submitter/{c['name']}", c["image"], 0))
    auto = cluster.get("autoscalerOptions") or {}
    if "image" in auto:
        out.append(("autoscaler", auto["image"], 0))
    return out


def test_every_ray_container_runs_an_image_of_the_dockerfile():
    """``<IMAGE_REPO>:<pyproject version>-<target>``: GPU containers the gpu target, the rest the cpu one."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    targets = _targets()
    docs = _k8s_docs()
    assert len(docs) >= 3
    seen = set()
    for doc in docs:
        for where, image, gpus in _images(doc):
            ref = f"{doc['kind']}/{doc['metadata']['name']} {where}"
            repo, _, tag = image.rpartition(":")
            assert repo == IMAGE_REPO, f"{ref}: {image} is not {IMAGE_REPO}"
            assert tag.rpartition("-")[0] == version, f"{ref}: {image} is not version {version}"
            target = tag.rpartition("-")[2]
            assert target in targets, f"{ref}: {image}: no target {target!r} in docker/Dockerfile"
            assert target == ("gpu" if gpus else "cpu"), f"{ref}: {gpus} GPUs on the {target} image"
            seen.add(target)
    assert seen == targets
