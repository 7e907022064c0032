"""`ray job submit` against a real Ray head that the test starts on loopback (own ports, own temp dir,
token auth off), running launch.py unchanged; the head is stopped afterwards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.script_loader import load_script
from tests.tiny_models import SMALL_EVAL

pytestmark = pytest.mark.job

REPO = Path(__file__).resolve().parents[1]


# The free-port picker and the shared environment of every head and driver are benchmarks/ray_head.py's (the
# chaos benchmark starts its head with them too).
_ray_head = load_script("benchmarks/ray_head.py")
_free_port, ray_env = _ray_head.free_port, _ray_head.ray_env


def start_ray_node(temp: Path, env: dict[str, str], *args: str) -> None:
    """`ray start ARGS` on 127.0.0.1 with its own temp dir and its own agent/metrics ports, so several nodes
    (and other Ray instances) can share this machine. Ray rewrites a loopback --address or
    --node-ip-address to the host's IP (services.resolve_ip_for_localhost); that is the same machine."""
    agent_http, agent_grpc, metrics = (_free_port() for _ in range(3))
    cmd = [str(Path(sys.executable).parent / "ray"), "start", *args, "--node-ip-address=127.0.0.1",
           f"--temp-dir={temp}", "--disable-usage-stats", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)


@pytest.fixture
def ray_head(tmp_path):
    """A head on 127.0.0.1 with its own GCS/dashboard ports and temp dir, started from this interpreter's venv."""
    env = ray_env()
    gcs, dash, client = (_free_port() for _ in range(3))
    temp = Path("/tmp") / f"rayjob-{os.getpid()}"  # Ray's socket paths must stay short
    try:
        # inside the try: a start that times out half-way still leaves daemons to stop
        start_ray_node(temp, env, "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                       "--num-cpus=6", "--include-dashboard=true", f"--ray-client-server-port={client}")
        yield f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}", env
    finally:
        _stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_head(temp: Path) -> None:
    """Stop only this head: `ray stop` would kill every Ray process of the host. Its daemons carry the
    temp dir in their command lines; workers and agents are their descendants."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if str(temp) in " ".join(p.info["cmdline"] or []):
            procs += [p, *p.children(recursive=True)]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()


@pytest.mark.parametrize(
    "preset",
    [["algorithm.train_timesteps=2"], ["--config", "configs/shapes_flowgrpo.yaml", "model.guidance_scale=1.0"],
     ["--config", "configs/shapes_dgpo.yaml", "algorithm.train_timesteps=2"]],
    ids=["default_diffusion_nft", "flow_grpo", "dgpo"],
)
def test_ray_job_submit_runs_launch_py(ray_head, tiny_sd3_path, tmp_path, preset):
    dashboard, _, env = ray_head
    out = tmp_path / "run"
    job = [
        str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", dashboard, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", "outputs", ".git", "assets/models"]}),
        "--", sys.executable, "launch.py", *preset, f"model.path={tiny_sd3_path}", "iterations=2",
        "data.images_per_iteration=8", "sampling.group_size=4", "sampling.num_steps=3", "sampling.eval_num_steps=3",
        "data.eval_num_prompts=2", *SMALL_EVAL, "logging.tensorboard=false", f"--output-dir={out}",
    ]
    # The head's job agent comes up a few seconds after `ray start` returns; until then the job API
    # answers "No available agent": retry only that.
    for _ in range(40):
        proc = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in proc.stderr:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", proc.stdout + proc.stderr)
    assert job_id, proc.stdout[-2000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(dashboard).get_job_status(job_id.group(1)) == JobStatus.SUCCEEDED
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [0, 1]
    assert (out / "eval.json").is_file()
