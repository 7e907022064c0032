"""Bad input that a long run meets: reward outputs of the wrong length, and checkpoint retention and
damage. (Configs, prompt files, images and NaN rewards have their own tests beside their modules.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster import checkpoints
from rewards.base import ScoreResult
from rewards.worker import RewardWorker

pytestmark = pytest.mark.unit


class _ShortScorer:
    """Returns one score too few: a broken reward model."""

    def __call__(self, images, prompts, metadata=None):
        return ScoreResult(np.zeros(len(images) - 1))


def test_reward_output_of_wrong_length_fails_that_request_only():
    worker = RewardWorker("short", factory=_ShortScorer)
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    bad = worker.score("r1", images, ["a"] * 3)
    assert bad.result is None and "scorer returned 2 scores for 3 images" in bad.error
    # an error is not cached: a retry of the same id runs the scorer again (and fails the same way here)
    retry = worker.score("r1", images, ["a"] * 3)
    assert retry is not bad and retry.error is not None
    again = worker.score("r2", images[:1], ["a"])  # still serving
    assert again.error is not None and worker.requests_served == 3


def _publish(out, iteration, keep):
    staging = checkpoints.staging_dir(out, iteration)
    (staging / "trainable.safetensors").write_bytes(b"x")
    return checkpoints.publish(staging, {"iteration": iteration, "policy_version": iteration, "seed": 0}, keep)


def test_retention_keeps_the_last_k(tmp_path):
    for it in (2, 4, 6, 8):
        _publish(tmp_path, it, keep=2)
    names = [p.name for p in checkpoints.complete_checkpoints(checkpoints.checkpoints_root(tmp_path))]
    assert names == ["iter_000006", "iter_000008"]


def test_damaged_state_file_is_named(tmp_path):
    latest = _publish(tmp_path, 3, keep=2)
    (latest / checkpoints.STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"trainer_state.json is missing or unreadable"):
        checkpoints.read_state(latest)
    (latest / checkpoints.STATE_FILE).write_text(json.dumps({"iteration": 3}))
    with pytest.raises(ValueError, match="lacks 'policy_version'"):
        checkpoints.read_state(latest)
