"""Monitoring on a real local Ray: a real Prometheus (Debian's `prometheus`, installed by .ci/run) scrapes a
run's metrics endpoint and every query of docs/grafana/flowray.json returns data; a killed rollout actor
shows as a restart counter; every actor's repr in Ray's state API (the dashboard's Repr column) names its
role, rank and policy version. Also, without Ray, which metric keys become which labelled gauges."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from cluster.config import REPO_ROOT, load_config
from tests.test_job_submit import _free_port
from tests.tiny_models import FLOWGRPO, SMALL_EVAL

DASHBOARD = REPO_ROOT / "docs" / "grafana" / "flowray.json"


def targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard; Grafana's $__rate_interval as a fixed window."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"].replace("$__rate_interval", "2m")) for p in panels for t in p["targets"]]


class _Gauge:
    sets: list = []

    def __init__(self, name, description="", tag_keys=()):
        self.name = name

    def set(self, value, tags=None):
        _Gauge.sets.append((self.name, value, tags))


@pytest.mark.unit
def test_metric_keys_become_labelled_gauges(tmp_path, monkeypatch):
    import ray.util.metrics

    from cluster.metrics import MetricsLogger

    monkeypatch.setattr(ray.util.metrics, "Gauge", _Gauge)
    _Gauge.sets = []
    logger = MetricsLogger(tmp_path, tensorboard=False, accuracy_tags=("counting", "position"))
    logger.log_scalars({"reward/tag/counting": 0.5, "probe/counting": 0.25, "probe/shapes_quality": 0.75,
                        "eval/overall": 0.5, "reward/shapes_geneval/unscored_share_window": 0.125}, 0)
    logger.set_actor_restarts({"rollout-1": 2, "reward-shapes_geneval-0": 1})
    assert logger.count_resume(7, "ckpt") == 1
    sets = set((n, v, tuple(sorted((t or {}).items()))) for n, v, t in _Gauge.sets)
    assert ("flowray_reward_by_tag", 0.5, (("tag", "counting"),)) in sets
    assert ("flowray_accuracy", 0.25, (("source", "probe"), ("tag", "counting"))) in sets
    assert ("flowray_accuracy", 0.5, (("source", "eval"), ("tag", "overall"))) in sets
    assert not any(n == "flowray_accuracy" and dict(t).get("tag") == "shapes_quality" for n, _, t in sets)  # a reward
    assert ("flowray_reward_unscored_share", 0.125, (("scorer", "shapes_geneval"),)) in sets
    assert ("flowray_actor_restarts", 2.0, (("actor", "rollout-1"), ("role", "rollout"))) in sets
    assert ("flowray_actor_restarts", 1.0, (("actor", "reward-shapes_geneval-0"), ("role", "reward"))) in sets
    assert ("flowray_run_resumes", 1.0, ()) in sets
    logger.close()


@pytest.fixture
def prometheus_ray(tmp_path):
    """A local Ray exporting metrics on a free port, and a Prometheus scraping it every second."""
    import ray

    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed: .ci/run installs Debian's package")
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
    metrics, web = _free_port(), _free_port()
    ray.init(address="local", num_cpus=8, include_dashboard=True, dashboard_port=_free_port(),
             _metrics_export_port=metrics, log_to_driver=False)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n"
                      f"  - job_name: ray\n    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{web}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        ray.shutdown()


def query(prometheus: str, expr: str) -> list:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


@pytest.mark.system
def test_prometheus_answers_every_dashboard_query_and_counts_a_restart(prometheus_ray, tiny_sd3_path, tmp_path):
    import ray
    from ray.util.state import list_actors

    from cluster.trainer import Trainer

    cfg = load_config(FLOWGRPO, [
        f"model.path={tiny_sd3_path}", "model.guidance_scale=2.0", "model.lora.rank=4", "model.lora.alpha=8",
        "sampling.group_size=4", "sampling.num_steps=3", "sampling.eval_num_steps=3", "data.images_per_iteration=8",
        "data.eval_num_prompts=2", *SMALL_EVAL, "logging.probe_every=1", "logging.probe_images_per_tag=1",
        "logging.eval_every=2", "iterations=3", "learner.micro_batch_size=8", "cluster.learner_num_cpus=0.5",
        "cluster.rollout_num_cpus=0.5", "logging.tensorboard=false", "logging.checkpoint_every=0",
        "rewards.scorers=[{name: shapes_geneval, num_cpus_per_actor: 0.5}, {name: shapes_quality, weight: 0.0, "
        "num_cpus_per_actor: 0.5}]", f"logging.output_dir={tmp_path}"])
    with Trainer(cfg) as trainer:
        alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], detail=True)
        reprs = {a.name: a.repr_name for a in alive if a.name}
        assert reprs["rollout-0"] == "RolloutWorker(role=rollout, rank=0, policy_version=0)", reprs
        assert reprs["learner-0"] == "LearnerWorker(role=learner, rank=0, policy_version=0)", reprs
        assert reprs["reward-shapes_geneval-0"] == "RewardWorker(role=reward, rank=0, scorer=shapes_geneval)", reprs
        os.kill(ray.get(trainer.rollouts[0].pid.remote()), signal.SIGKILL)  # a kill the dashboard must show
        trainer.train()
        missing, deadline = targets(), time.monotonic() + 120
        while missing and time.monotonic() < deadline:  # Ray exports every few seconds; Prometheus scrapes every 1 s
            missing = [(title, expr) for title, expr in missing if not query(prometheus_ray, expr)]
            time.sleep(2)
        assert not missing, f"panels without data: {missing}"
        restarts = query(prometheus_ray, 'max by (actor) (ray_flowray_actor_restarts{actor="rollout-0"})')
        assert float(restarts[0]["value"][1]) == 1.0
