"""Two Ray nodes on one machine (ray.cluster_utils.Cluster: a head and a worker node, each with its own
CPUs), learner ranks placed on different nodes, driven through `ray job submit --working-dir`:
a relative `logging.output_dir` lands in the storage path resolved on the driver (not in Ray's
unpacked copy of the working dir), every learner node checks it sees that storage, and `--resume`
continues from the checkpoint both ranks wrote."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.test_job_submit import REPO, _free_port

pytestmark = pytest.mark.job


@pytest.fixture
def two_node_cluster(tmp_path, monkeypatch):
    """ray.cluster_utils.Cluster: a head (with the dashboard's job API) and a worker node, 3 CPUs each,
    all on 127.0.0.1; HOME points into tmp_path so ~/flowray_results stays inside the test."""
    from ray.cluster_utils import Cluster

    bin_dir = Path(sys.executable).parent
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the nodes (and so the job's driver) inherit it
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    dash = _free_port()
    # Each node's dashboard agent needs its own port (the default 52365 may be taken by another Ray).
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 3, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dash,
        "node_ip_address": "127.0.0.1", "dashboard_agent_listen_port": _free_port()})
    try:
        cluster.add_node(num_cpus=3, node_ip_address="127.0.0.1", dashboard_agent_listen_port=_free_port())
        cluster.wait_for_nodes()
        yield f"http://127.0.0.1:{dash}", home
    finally:
        cluster.shutdown()


def _submit(dashboard: str, args: list[str]) -> str:
    """What `ray job submit --working-dir REPO -- python launch.py ARGS` does, through the same job API,
    with a fixed submission id: on this loaded 2-core machine the API can answer 504 while the job is
    being created, and a blind retry would start a second driver."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    job_id = f"flowray_{uuid.uuid4().hex[:8]}"
    runtime_env = {"working_dir": str(REPO), "excludes": [".venv", "runs", "outputs", ".git", "assets/models"]}
    entrypoint = " ".join(shlex.quote(a) for a in [sys.executable, "launch.py", *args])
    for _ in range(20):  # the job agent comes up a few seconds after the head
        try:
            client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id)
            break
        except RuntimeError as err:
            if "504" in str(err) or "No available agent" in str(err):
                try:
                    client.get_job_status(job_id)
                    break  # created after all
                except RuntimeError:
                    time.sleep(3)
                    continue
            raise
    deadline = time.monotonic() + 900
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-4000:]
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    return logs


@pytest.mark.skip(reason="unfinished: under ray.cluster_utils.Cluster with 127.0.0.1 nodes the job API times out "
                  "'waiting for an available job agent' (and `ray start --address=127.0.0.1:P` for a second node "
                  "canonicalizes the GCS address to the host IP); the storage logic it drives is in test_storage.py")
def test_learners_on_two_nodes_write_to_the_storage_path_and_resume(two_node_cluster, tiny_sd3_path):
    dashboard, home = two_node_cluster
    args = [f"model.path={tiny_sd3_path}", "data.images_per_iteration=8", "sampling.group_size=4",
            "sampling.num_steps=3", "sampling.eval_num_steps=3", "data.eval_num_prompts=2", "logging.eval_base=false",
            "logging.tensorboard=false", "logging.checkpoint_every=1", "learner.zero_stage=2",
            "cluster.num_learner_ranks=2", "cluster.num_rollout_actors=1", "cluster.colocate=true",
            "cluster.placement_strategy=STRICT_SPREAD", "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5",
            "--output-dir=runs/two_nodes"]  # relative: resolved once on the driver
    first = _submit(dashboard, [*args, "iterations=1"])
    seen = re.search(r"storage (\S+): seen by learner-0 \(node (\w+)\), learner-1 \(node (\w+)\)", first)
    assert seen, first[-3000:]
    out = home / "flowray_results" / "runs" / "two_nodes"
    assert seen.group(1) == str(out)
    assert seen.group(2) != seen.group(3), "the learner ranks were not placed on different nodes"
    resumed = _submit(dashboard, [*args, "iterations=2", "--resume"])
    assert "resumed from" in resumed and "iter_000001" in resumed, resumed[-3000:]
    rows = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1]
    last = out / "checkpoints" / "iter_000002"
    assert {p.name for p in last.glob("optimizer_rank*.safetensors")} == {"optimizer_rank0.safetensors",
                                                                        "optimizer_rank1.safetensors"}
    assert (out / "eval.json").is_file()
