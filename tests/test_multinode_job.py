"""Two Ray nodes on one machine (a `ray start --head` and a `ray start --address` worker node, each with
its own CPUs, ports and temp dir, so each unpacks its own copy of the job's working dir), learner ranks
placed on different nodes (STRICT_SPREAD over their bundles), driven through `ray job submit
--working-dir`: a relative `logging.output_dir` lands in the storage path resolved on the driver (not in
Ray's unpacked copy of the working dir), every learner node checks it sees that storage, and `--resume`
continues from the checkpoint both ranks wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.test_job_submit import REPO, _free_port, _stop_head, ray_env, start_ray_node
from tests.tiny_models import SMALL_EVAL

pytestmark = pytest.mark.job


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head (with the dashboard's job API) and a worker node, 3 CPUs each; HOME points into tmp_path so
    ~/flowray_results stays inside the test (the nodes, and so the job's driver, inherit it)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**ray_env(), "HOME": str(home)}
    gcs, dash, client = (_free_port() for _ in range(3))
    temps = [Path("/tmp") / f"rayjob-{os.getpid()}-{node}" for node in ("head", "worker")]  # short socket paths
    try:
        start_ray_node(temps[0], env, "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                       f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=3",
                       f"--ray-client-server-port={client}")
        start_ray_node(temps[1], env, f"--address=127.0.0.1:{gcs}", "--num-cpus=3")
        yield f"http://127.0.0.1:{dash}", env, home
    finally:
        for temp in reversed(temps):
            _stop_head(temp)
            shutil.rmtree(temp, ignore_errors=True)


def _submit(dashboard: str, env: dict[str, str], args: list[str]) -> str:
    """`ray job submit --working-dir REPO -- python launch.py ARGS`; returns the job's log. A fixed
    submission id makes a retry (while the head's job agent comes up) unable to start a second driver."""
    job_id = f"flowray_{uuid.uuid4().hex[:8]}"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", dashboard,
           f"--submission-id={job_id}", "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", "outputs", ".git", "assets/models"]}),
           "--", sys.executable, "launch.py", *args]
    for _ in range(40):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in proc.stderr:
            break
        time.sleep(3)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"Job '{job_id}' succeeded" in logs, logs[-4000:]
    return logs


def test_learners_on_two_nodes_write_to_the_storage_path_and_resume(two_node_cluster, tiny_sd3_path):
    dashboard, env, home = two_node_cluster
    args = [f"model.path={tiny_sd3_path}", "data.images_per_iteration=8", "sampling.group_size=4",
            "sampling.num_steps=3", "sampling.eval_num_steps=3", "data.eval_num_prompts=2", *SMALL_EVAL, "logging.eval_base=false",
            "logging.tensorboard=false", "logging.checkpoint_every=1", "learner.zero_stage=2",
            "cluster.num_learner_ranks=2", "cluster.num_rollout_actors=1", "cluster.colocate=true",
            "cluster.placement_strategy=STRICT_SPREAD", "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5",
            "--output-dir=runs/two_nodes"]  # relative: resolved once on the driver
    first = _submit(dashboard, env, [*args, "--iterations=1"])
    seen = re.search(r"storage (\S+): seen by learner-0 \(node (\w+)\), learner-1 \(node (\w+)\)", first)
    assert seen, first[-3000:]
    out = home / "flowray_results" / "runs" / "two_nodes"
    assert seen.group(1) == str(out)
    assert seen.group(2) != seen.group(3), "the learner ranks were not placed on different nodes"
    resumed = _submit(dashboard, env, [*args, "--iterations=2", "--resume"])
    assert "resumed from" in resumed and "iter_000001" in resumed, resumed[-3000:]
    rows = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1]
    last = out / "checkpoints" / "iter_000002"
    assert {p.name for p in last.glob("optimizer_rank*.safetensors")} == {"optimizer_rank0.safetensors",
                                                                        "optimizer_rank1.safetensors"}
    assert (out / "eval.json").is_file()
