"""Reward actors on a real local Ray: batching, async submit/gather, actor death, timeouts and scorer errors
(images left unscored, never a reward), NaN policy."""

import os
import sys
import time

import numpy as np
import pytest

from rewards.base import ScoreResult, ScorerInputError, register_scorer
from rewards.config import RewardsConfig, ScorerConfig
from rewards.shapes import all_records, render, sample_scene

pytestmark = pytest.mark.system
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class IndexScorer:
    """Reward = the image's index from its metadata (so duplicates and losses are visible), after a
    per-request delay; an index in `nan_at` scores NaN, one in `unscored_at` is reported unscored, one in
    `hang_at` never returns; a record with "bad_input" is refused (ScorerInputError)."""

    name = "index"

    def __init__(self, delay_s: float = 0.0, nan_at: tuple = (), hang_at: tuple = (), unscored_at: tuple = ()):
        self.delay_s, self.nan_at, self.hang_at, self.unscored_at = delay_s, set(nan_at), set(hang_at), set(unscored_at)

    def __call__(self, images, prompts, metadata):
        if any("bad_input" in m for m in metadata):
            raise ScorerInputError("bad_input in the metadata")
        index = np.array([m["i"] for m in metadata], dtype=np.float64)
        while self.hang_at & set(index.tolist()):
            time.sleep(1.0)
        time.sleep(self.delay_s)
        reward = np.where(np.isin(index, list(self.nan_at)), np.nan, index)
        return ScoreResult(reward, {"pid": np.full(len(index), os.getpid(), dtype=np.float64)},
                           scored=~np.isin(index, list(self.unscored_at)))


for _name in ("index_kill", "index_hang", "index_nan", "index_async"):
    register_scorer(_name)(IndexScorer)  # names the config accepts; actors build theirs through `factory`


def factory(**kwargs):
    return lambda: IndexScorer(**kwargs)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    # Ray pickles the test module's scorer by value: its workers cannot import this test file.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def _batch(n, start=0):
    return (np.zeros((n, 8, 8, 3), dtype=np.uint8), [f"p{start + i}" for i in range(n)],
            [{"i": start + i} for i in range(n)])


def test_shapes_pool_scores_batches(ray_local):
    from rewards.pool import RewardPools

    cfg = RewardsConfig(scorers=[ScorerConfig(name="shapes_geneval", actors=2, batch_size_per_request=4,
                                              num_cpus_per_actor=0.5)])
    pools = RewardPools(cfg)
    try:
        names = {ray_local.get_actor(f"reward-shapes_geneval-{i}") is not None for i in range(2)}
        assert names == {True}
        rng = np.random.default_rng(0)
        records = [r for rs in all_records().values() for r in rs[:2]]
        images = np.stack([render(sample_scene(r, rng)) for r in records])
        handle = pools.submit(images, [r["prompt"] for r in records], records)  # returns at once
        assert len(handle["shapes_geneval"].requests) == 3  # 12 images, batches of <= 4
        batch = pools.gather(handle)
        np.testing.assert_array_equal(batch.results["shapes_geneval"].reward, 1.0)
        np.testing.assert_array_equal(batch.combined.reward, 1.0)
        assert batch.metrics()["reward/shapes_geneval/mean"] == 1.0
    finally:
        pools.shutdown()


def test_reward_actor_threads_follow_its_cpu_reservation(ray_local, tmp_path):
    """A scorer sizes its pools from num_cpus_per_actor inside the real Ray actor: OCR's onnxruntime sessions
    (read back from the sessions; onnxruntime's own default reads 0) and a CLIP scorer's torch pool (Ray sets
    OMP_NUM_THREADS=1 in actors, whatever they reserve). The floor of a fraction: test_rewards_unit.py."""
    from rewards.pool import ScorerPool
    from tests.test_rewards_models import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    pools = [ScorerPool(ScorerConfig(name="ocr", num_cpus_per_actor=2.0)),
             ScorerPool(ScorerConfig(name="pickscore", model=clip, options={"processor": None}, num_cpus_per_actor=2.0))]
    try:
        ocr, pick = (ray_local.get(pool.actors[0].threads.remote()) for pool in pools)
        assert ocr["onnxruntime"] == 2 and pick["torch"] == 2
    finally:
        for pool in pools:
            pool.shutdown()


def test_actor_killed_mid_stream_every_score_once(ray_local):
    from rewards.pool import ScorerPool

    cfg = ScorerConfig(name="index_kill", actors=2, batch_size_per_request=2, num_cpus_per_actor=0.5, timeout_s=60)
    pool = ScorerPool(cfg, factory=factory(delay_s=0.3))
    try:
        handles = [pool.submit(*_batch(8, start=8 * k)) for k in range(3)]  # 12 requests over 2 actors
        victim = pool.actors[0]
        time.sleep(0.5)  # mid-stream: the first requests are running
        ray_local.kill(victim, no_restart=False)
        rewards = np.concatenate([pool.gather(h).reward for h in handles])
        np.testing.assert_array_equal(rewards, np.arange(24))  # every image exactly once, in order
        assert pool.resubmitted_total >= 1 and pool.duplicates_ignored == 0
        assert pool.in_flight() == 0
        after = pool.score(*_batch(4, start=100))  # the restarted actor serves again
        np.testing.assert_array_equal(after.reward, np.arange(100, 104))
    finally:
        pool.shutdown()


def test_hanging_request_leaves_its_images_unscored_and_the_restarted_actor_serves_on(ray_local):
    from rewards.pool import ScorerPool

    # timeout_s is also how long the pool waits for the restarted actor: room for a loaded 2-core machine
    cfg = ScorerConfig(name="index_hang", actors=1, num_cpus_per_actor=0.5, timeout_s=5.0)
    pool = ScorerPool(cfg, factory=factory(hang_at=(1,)))
    try:
        start = time.monotonic()
        hung, after = pool.submit(*_batch(2)), pool.submit(*_batch(2, start=2))  # `after` waits behind it
        result = pool.gather(hung)
        assert time.monotonic() - start < 20
        assert result.valid.tolist() == [False, False] and np.isnan(result.reward).all()  # not a reward of 0
        assert "exceeded timeout_s=5 on actor reward-index_hang-0" in result.errors[0]
        np.testing.assert_array_equal(pool.gather(after).reward, [2, 3])  # resubmitted to the restarted actor
        assert pool.unscored_total == {"timeout": 2}
    finally:
        pool.shutdown()


def test_scorer_errors_leave_images_unscored_bad_input_raises_and_nan_policies(ray_local):
    from rewards.pool import NonFiniteRewardError, RewardRequestError, ScorerPool

    cfg = ScorerConfig(name="index_nan", actors=1, num_cpus_per_actor=0.5, timeout_s=30)
    pool = ScorerPool(cfg, nan_policy="mask", factory=factory(nan_at=(1,), unscored_at=(2,)))
    try:
        images, prompts, metadata = _batch(3)
        failed = pool.score(images, prompts, [{}, {}, {}])  # the scorer raises (KeyError) on this request only
        assert not failed.valid.any() and "KeyError" in failed.errors[0]
        with pytest.raises(RewardRequestError, match=r"'index_nan'.*refused.*bad_input"):
            pool.score(images, prompts, [{"i": 0, "bad_input": 1}, {"i": 1}, {"i": 2}])
        masked = pool.score(images, prompts, metadata)  # ... and the actor keeps serving
        assert masked.valid.tolist() == [True, False, False] and masked.reward[0] == 0.0
        assert pool.unscored_total == {"error": 3, "reported": 1, "nonfinite": 1}
        pool.nan_policy = "fail"
        with pytest.raises(NonFiniteRewardError, match=r"'index_nan'.*\['p1'\]"):
            pool.score(images, prompts, metadata)  # the reported image (p2) is not a non-finite score
    finally:
        pool.shutdown()


def test_submit_is_asynchronous(ray_local):
    from rewards.pool import ScorerPool

    cfg = ScorerConfig(name="index_async", actors=1, num_cpus_per_actor=0.5)
    pool = ScorerPool(cfg, factory=factory(delay_s=1.0))
    try:
        start = time.monotonic()
        handle = pool.submit(*_batch(2))
        assert time.monotonic() - start < 0.5 and pool.in_flight() == 1
        result = pool.gather(handle)
        np.testing.assert_array_equal(result.reward, [0, 1])
    finally:
        pool.shutdown()
