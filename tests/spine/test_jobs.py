"""`ray job submit` against a real local cluster (`ray start --head` on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from polymodal import storage
from polymodal.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def head_node(s3_server):
    """`ray start --head --block` in its own temp dir, so stopping it leaves the session's
    in-process cluster alone (a plain `ray stop` would kill every Ray process on the machine).
    Token authentication stays on: the job server refuses requests without the token."""
    temp_dir = tempfile.mkdtemp(prefix="pmray", dir="/tmp")
    # its own agent port too: the session's in-process cluster holds Ray's default (52365), and a
    # head whose job agent cannot bind answers every submit with "No available agent"
    gcs_port, dash_port, agent_port = free_port(), free_port(), free_port()
    # `python` in a job's entrypoint is the cluster's Python: this venv's, where polymodal is installed
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    token_path = Path.home() / ".ray" / "auth_token"
    if not token_path.exists():
        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={agent_port}",
         "--num-cpus=4", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dash_port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # up, and answering (401 without a token)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {proc.stdout.read()[-2000:]}")
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the Ray head's job server did not come up within 120 s")
    yield address
    # `ray start --block` spends ~30 s on a graceful SIGTERM; this head served one job and holds
    # no state worth saving: give it 5 s, then SIGKILL its whole session (gcs, raylet, workers;
    # start_new_session makes them one process group)
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_server_requires_the_token(head_node):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{head_node}/api/jobs/", timeout=10)
    assert info.value.code in (401, 403)


def test_ray_job_submit_train_succeeds_and_checkpoints_to_s3(head_node, wander_data, s3_bucket_uri):
    from ray.job_submission import JobStatus, JobSubmissionClient

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    client = JobSubmissionClient(head_node, headers={"Authorization": f"Bearer {token}"})
    sets = ["name=job", f"storage_path={s3_bucket_uri}", f"model.backbone={wander_data['backbone']}",
            f"data.train={wander_data['train']}", f"data.val={wander_data['val']}",
            "scaling.num_workers=1", "optim.epochs=1", "optim.max_steps_per_epoch=4"]
    entrypoint = "python jobs/train.py -q --config jobs/configs/wander_tiny.yaml " + " ".join(
        f"--set {s}" for s in sets)
    runtime_env = {"working_dir": str(ROOT),
                   "excludes": [".venv/", ".git/", "demo_out/", "runs/", "**/__pycache__/", ".hypothesis/"]}
    # a head that just started may not have its job agent yet ("No available agent ..."): retry that
    deadline = time.time() + 90
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(2)
    deadline = time.time() + 480
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "checkpoint:" in logs and "run folder:" in logs  # the job says where things went
    summary = json.loads(storage.read_text(f"{s3_bucket_uri}/job/summary.json"))
    ckpt = summary["latest_checkpoint"]
    assert ckpt.startswith("s3://")
    assert storage.exists(storage.join(ckpt, "model", "trainable.safetensors"))


def test_failing_job_exits_nonzero_with_one_line_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: wander.classification\nmodel: {preset: tiny}\ndata: {}\n")
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), "--config", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    err = [ln for ln in out.stderr.splitlines() if ln.startswith("polymodal:")]
    assert err and "data.train" in out.stderr and "model.backbone" in out.stderr
