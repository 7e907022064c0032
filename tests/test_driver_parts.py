"""The driver's parts outside cluster/trainer.py: the one weighted reward sum (rewards/combine.py), the
schedules (cluster/scheduling.py) and the prompt order object (rewards/prompt_order.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.config import REPO_ROOT, load_config
from cluster.scheduling import SCHEDULES, Asynchronous, ColocatedOffload, Synchronous, schedule_for, timed
from rewards.combine import combine, weighted_sum
from rewards.prompt_order import (
    PromptOrder,
    mirrored_prompts_for_iteration,
    prompt_mirrors,
    prompts_for_iteration,
    tag_balanced_prompts_for_iteration,
)
from rewards.prompts import load_prompts, prompt_tags

pytestmark = pytest.mark.unit

TRAIN = REPO_ROOT / "assets" / "prompts" / "shapes_train.jsonl"


def _bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).view(np.int64)


def test_the_weighted_sum_is_the_advantage_stages_old_sum_bit_for_bit():
    """The advantage stage summed float64 tensors term by term from 0 in scorer order; the one
    implementation must give the same bits for any weights (a matrix product does not, in the last bit)."""
    rng = np.random.default_rng(0)
    for names in (["a"], ["a", "b"], ["a", "b", "c"], ["c", "a", "b", "d"]):
        for size in (1, 7, 64, 1000):
            scores = {n: rng.standard_normal(size) * rng.uniform(0.1, 10) for n in names}
            weights = {n: float(rng.uniform(0, 2)) for n in names}
            tensors = {n: torch.from_numpy(scores[n]).double() for n in names}
            old = sum(weights[n] * tensors[n] for n in names)
            assert np.array_equal(_bits(weighted_sum(tensors, weights)), _bits(old.numpy()))
            assert np.array_equal(_bits(weighted_sum(scores, weights)), _bits(old.numpy()))
            assert np.array_equal(_bits(combine(scores, weights).reward), _bits(old.numpy()))


def test_the_main_jobs_combined_reward_is_the_old_matrix_product_bit_for_bit():
    """The default preset's weights (the trained scorer 1, the watch 0): the metrics' combined reward
    (combine) is what `w @ matrix` gave, NaN where a score is masked."""
    cfg = load_config(None, [])
    weights = cfg.rewards.weights()
    assert sorted(weights.values()) == [0.0, 1.0]
    rng = np.random.default_rng(1)
    for size in (1, 16, 256):
        scores = {n: rng.uniform(0, 1, size) for n in weights}
        scores[next(iter(weights))][::5] = np.nan
        w = np.asarray(list(weights.values()), dtype=np.float64)
        old = w @ np.stack([scores[n] for n in weights])
        new = combine(scores, weights).reward
        assert np.array_equal(np.isnan(new), np.isnan(old))
        assert np.array_equal(_bits(new[~np.isnan(new)]), _bits(old[~np.isnan(old)]))


def test_each_mode_has_one_schedule_that_submits_at_its_point_of_the_loop():
    assert SCHEDULES == {(False, False): Synchronous, (True, False): Asynchronous, (False, True): ColocatedOffload}
    points = ("rollout", "sync", "checkpoint")
    expected = {Synchronous: "sync", Asynchronous: "rollout", ColocatedOffload: "checkpoint"}
    for (async_mode, offload), kind in SCHEDULES.items():
        cluster = type("Cluster", (), {"async_mode": async_mode, "colocate_offload": offload})()
        submitted = []
        schedule = schedule_for(cluster, lambda it, log=submitted: log.append(it) or f"rollout {it}", [], [])
        assert type(schedule) is kind
        schedule.start(0, 3)
        for it in range(3):
            assert schedule.take() == f"rollout {it}"
            for point in points:
                before = len(submitted)
                schedule.reached(point, it)
                if len(submitted) > before:
                    assert point == expected[kind] and submitted[-1] == it + 1
        assert submitted == [0, 1, 2]  # never past the last iteration
        schedule.start(0, 3)
        schedule.take()
        schedule.reached(expected[kind], 0, stopping=True)  # a budget stops the run: no next rollout
        assert schedule.take() is None and schedule.in_flight() == []


def test_only_the_colocated_schedule_moves_sides_and_timed_adds_up():
    calls = []

    class Actor:
        def __init__(self, name):
            self.offload = type("M", (), {"remote": lambda _: calls.append(("offload", name))})()
            self.reload = type("M", (), {"remote": lambda _: calls.append(("reload", name))})()

    learner, rollout = Actor("learner"), Actor("rollout")
    assert Synchronous(lambda it: None, [learner], [rollout]).hold("learner") == 0.0 and not calls
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ray.get", lambda refs: refs)
        colocated = ColocatedOffload(lambda it: None, [learner], [rollout])
        assert colocated.hold("rollout") >= 0.0 and colocated.resident == "rollout"
        assert calls == [("offload", "learner"), ("reload", "rollout")]
        assert colocated.hold("rollout") == 0.0 and len(calls) == 2  # already so
    times = {}
    for _ in range(2):
        with timed(times, "time/x"):
            pass
    assert set(times) == {"time/x"} and times["time/x"] >= 0.0


def test_the_prompt_order_is_the_configured_function_for_every_iteration():
    records = load_prompts(TRAIN)
    tags = prompt_tags(records, str(TRAIN))
    plain = [f"data.train_prompts={TRAIN}", "data.prompt_order=epochs", "data.tag_weights={}",
             "data.mirror_position_prompts=false", "data.mirror_binding_prompts=false"]
    cases = {
        "epochs": ([], lambda it: prompts_for_iteration(len(records), 8, 3, it)),
        "tag_balanced": (["data.prompt_order=tag_balanced", "data.tag_weights={position: 2}"],
                         lambda it: tag_balanced_prompts_for_iteration(tags, 8, 3, it, {"position": 2})),
    }
    mirrored = ["data.prompt_order=tag_balanced", "data.tag_weights={position: 2}",
                "data.mirror_position_prompts=true"]
    mirrors = prompt_mirrors(records, load_config(None, plain + mirrored).data)
    cases["mirrored"] = (mirrored, lambda it: mirrored_prompts_for_iteration(tags, mirrors, 8, 3, it, {"position": 2}))
    for kind, (overrides, expected) in cases.items():
        data = load_config(None, plain + overrides).data
        order = PromptOrder(data, records, per_iteration=8, seed=3)
        assert order.kind == kind
        assert [order.indices(it) for it in (*range(6), 5, 2, 7)] == [expected(it) for it in (*range(6), 5, 2, 7)]
