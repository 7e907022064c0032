"""A shapes run that scores through flowray's reward server on loopback (`python -m rewards serve`, behind
a fault-injecting proxy), on a real local Ray: every image of every iteration is scored exactly once or
left unscored, the metrics say which, and unscored images are never trained."""

from __future__ import annotations

import json

import httpx
import pytest

from cluster.config import load_config
from cluster.trainer import Trainer
from tests.fault_http import FaultServer, forward_to, served
from tests.tiny_models import FLOWGRPO, SMALL_EVAL

pytestmark = pytest.mark.system

TOKEN = "system-token"
# Per HTTP request (2 images each, one at a time, 4 per iteration): the faults of its first tries.
# Requests 0-3 (iteration 0) recover on their second try; request 5 (iteration 1) never gets an answer.
SCHEDULE = {0: ["500"], 1: ["malformed"], 2: ["timeout"], 3: ["slow"], 5: ["500", "timeout", "malformed"]}


def test_a_shapes_run_through_a_faulty_reward_service_scores_each_image_once_or_leaves_it_unscored(
        local_ray, tiny_sd3_path, tmp_path):
    with served("shapes_geneval", token=TOKEN, tmp_path=tmp_path) as server:
        proxy = FaultServer(forward_to(server, TOKEN), key=lambda body: body["request_id"],
                            schedule=lambda key, i, attempt: (SCHEDULE.get(i, []) + [None] * 3)[attempt])
        (tmp_path / "client_token").write_text(TOKEN)
        options = (f"{{url: '{proxy.url}', token_file: '{tmp_path / 'client_token'}', scorer: shapes_geneval, "
                   "images_per_request: 2, max_in_flight: 1, timeout_s: 0.5, retries: 2, backoff_s: 0.01}")
        cfg = load_config(FLOWGRPO, [
            f"model.path={tiny_sd3_path}", "model.lora.rank=4", "model.lora.alpha=8", "sampling.group_size=4",
            "sampling.num_steps=3", "sampling.eval_num_steps=3", "data.images_per_iteration=8", "iterations=2",
            f"rewards.scorers=[{{name: remote, options: {options}}}]", "rewards.max_unscored_share=0.3",
            "learner.micro_batch_size=8", "cluster.num_learner_ranks=1", "cluster.num_rollout_actors=1",
            "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5", "cluster.async_mode=false",
            "logging.tensorboard=false", f"logging.output_dir={tmp_path / 'run'}", *SMALL_EVAL])
        try:
            with Trainer(cfg) as trainer:
                trainer.train()
        finally:
            proxy.shutdown()
        stats = httpx.get(server + "/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:  # every image once: scored or unscored, never both, never missing
        assert row["reward/remote/scored"] + row["reward/remote/unscored"] == 8
        assert row["reward/unscored_images"] == row["reward/remote/unscored"]
        assert row["advantage/samples_kept"] <= row["reward/remote/scored"]  # unscored images are not trained
    assert [r["reward/remote/unscored"] for r in rows] == [0, 2]  # request 5's two images
    assert rows[1]["reward/remote/unscored_share_window"] == pytest.approx(2 / 16)
    assert all(len(tries) == (3 if i == 5 else 2 if i < 4 else 1)
               for key, tries in proxy.faults.items() for i in [proxy.order[key]])
    # The slow answer was scored, lost and asked again: the server answered the retry from its cache.
    assert stats["images_scored"] == sum(r["reward/remote/scored"] for r in rows) == 14
    assert stats["cache_hits"] == 1
