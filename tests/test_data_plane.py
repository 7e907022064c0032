"""The data plane (common/data_plane.py): rollout tensors travel by reference, each distinct latent
once, only what the learner reads; the driver handles metadata; rewards stream as groups finish;
evaluation images stay in the object store too, except the few that the pictures show."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data_plane import LearnerPayload, distinct_rows, strip
from rewards.base import ScoreResult
from rewards.quality import ShapesQualityScorer
from tests.script_loader import load_script
from tests.test_strategies import CASES, cfg_for, run
from tests.test_system import _config

TRANSITION_FIELDS = ("inputs", "input_id", "next_latents", "sigma", "sigma_next", "log_prob", "sample_id", "step")


@pytest.mark.parametrize("algorithm,kw", [*CASES, ("diffusion_nft", {})])
def test_payload_restores_the_record_bit_for_bit(algorithm, kw):
    record = run(cfg_for(algorithm, **kw))
    payload = LearnerPayload.of(record)
    back = payload.restore(strip(record))
    for name in TRANSITION_FIELDS:
        assert torch.equal(getattr(back.transitions, name), getattr(record.transitions, name)), name
    # Only what the learner reads: final samples for the forward-process family, never per-step ones.
    assert record.learner_needs_final is (algorithm == "diffusion_nft")
    if algorithm == "diffusion_nft":
        assert torch.equal(back.final_latents, record.final_latents) and len(record.transitions) == 0
        back.validate()
    else:
        assert payload.final_latents is None
    assert back.anchor_latents is None


def test_a_trajectory_stores_each_latent_once():
    cfg = cfg_for("flow_grpo")  # G = 24 trajectories, all 10 steps trained
    record = run(cfg)
    t = record.transitions
    chain = LearnerPayload.of(record).chain
    # Pairs keep x_t and x_next per step (2 x 10 x 24 latents); the chain keeps x_0 .. x_10 once (11 x 24).
    assert t.inputs.shape[0] + t.next_latents.shape[0] == 2 * 10 * 24
    assert chain.latents.shape[0] == 11 * 24


def test_distinct_rows_is_bitwise():
    a = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0]])  # -0.0 == 0.0 numerically, not bitwise
    rows, (index,) = distinct_rows(a)
    assert rows.shape[0] == 2 and index.tolist() == [0, 1, 0]
    assert torch.equal(rows[index].view(torch.int32), a.view(torch.int32))


class TimedQuality(ShapesQualityScorer):
    """shapes_quality that also reports when it was called (wall clock), per image."""

    def __call__(self, images, prompts, metadata=None):
        called_at = time.time()
        result = super().__call__(images, prompts, metadata)
        return ScoreResult(result.reward, {**result.diagnostics, "called_at": np.full(len(images), called_at)})


@pytest.fixture(scope="module")
def trainer(local_ray, tiny_sd3_path, tmp_path_factory):
    from ray import cloudpickle

    from cluster.trainer import Trainer
    from rewards.pool import RewardPools

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # reward actors cannot import this test file

    cfg = _config(tiny_sd3_path, tmp_path_factory.mktemp("data-plane"), iterations=1, **{
        "cluster.num_learner_ranks": 1, "learner.zero_stage": 0, "sampling.num_steps": 8,
        "data.images_per_iteration": 32, "data.eval_num_prompts": 16, "data.eval_images_per_prompt": 16,
        "cluster.torch_threads_per_actor": 1, "cluster.learner_torch_threads": 2,
    })  # fmt: skip
    with Trainer(cfg) as trainer:
        trainer.rewards.shutdown()
        trainer.rewards = RewardPools(cfg.rewards, factories={"shapes_quality": TimedQuality})
        trainer.rewards.score(np.zeros((1, 32, 32, 3), np.uint8), [""])  # the scorer's first call imports its detector
        yield trainer


@pytest.mark.system
def test_rewards_score_groups_while_later_groups_sample(trainer):
    results, pending_rewards = trainer.rollout(trainer.submit_rollout(0))  # 8 groups, one rollout actor
    scored = trainer.reward(results, pending_rewards)
    first_call = min(float(s.scores["shapes_quality"].diagnostics["called_at"].min()) for s in scored)
    last_sampled = max(r.sampled_at for r in results)
    # Scoring a whole shard after it returns would start after the last group is sampled.
    assert first_call < last_sampled, (first_call, last_sampled)


@pytest.mark.system
def test_the_driver_never_receives_latents_or_images(trainer):
    import ray

    traffic_of = load_script("benchmarks/data_plane.py").DriverTraffic
    cfg = trainer.cfg
    image_bytes = cfg.data.images_per_iteration * cfg.model.resolution**2 * 3
    trainer.iteration = 0
    with traffic_of() as traffic:
        trainer.train()  # one iteration: rollout, reward, advantage, update, sync, checkpoint
    # Metadata only (ids, scores, versions): tens of bytes per image. Receiving the images alone would
    # exceed the bound, the latents several times over.
    assert traffic.got + traffic.put < image_bytes / 8, (traffic.got, traffic.put, image_bytes)
    assert trainer.version == 1
    # It trained on the embeddings that came with the groups: the learner rank loaded the transformer only.
    modules = trainer.learners[0].__ray_call__.remote(lambda worker: [type(m).__name__ for m in worker.policy.modules()])
    assert ray.get(modules) == ["SD3Transformer2DModel"]


@pytest.mark.system
def test_the_learner_ranks_take_their_own_thread_count(trainer):
    import ray

    def threads(worker) -> int:
        import torch

        return torch.get_num_threads()

    assert ray.get(trainer.learners[0].__ray_call__.remote(threads)) == 2  # cluster.learner_torch_threads
    assert ray.get(trainer.rollouts[0].__ray_call__.remote(threads)) == 1  # cluster.torch_threads_per_actor


@pytest.mark.system
def test_evaluation_leaves_its_images_in_the_object_store_and_matches_in_process(trainer, tmp_path):
    import ray

    from cluster.evaluation import PICTURED
    from cluster.run_evaluation import evaluate_in_process
    from rewards.pool import RewardPools

    traffic_of = load_script("benchmarks/data_plane.py").DriverTraffic
    cfg = trainer.cfg
    trainer.rewards.shutdown()
    trainer.rewards = RewardPools(cfg.rewards)  # the config's own scorers, as in process
    try:
        with traffic_of() as traffic:
            by_reference = trainer.evaluate()
    finally:
        trainer.rewards.shutdown()
        trainer.rewards = RewardPools(cfg.rewards, factories={"shapes_quality": TimedQuality})
    plan, pick = by_reference.plan, by_reference.plan.image_index(**PICTURED)
    assert plan.num_images == 256 and len(pick) == 72  # 16 prompts x 16 images; 9 prompts x 8 pictured
    # The pictures' images plus metadata (tens of bytes per image); every image would be 256 of them.
    image_bytes = cfg.model.resolution**2 * 3
    assert traffic.got + traffic.put < (len(pick) + plan.num_images / 8) * image_bytes, (traffic.got, traffic.put)
    # The same numbers as the in-process path (launch.py eval) with the same weights and seeds.
    weights = ray.get(trainer.learners[0].export_weights.remote())
    in_process = evaluate_in_process(cfg, output_dir=tmp_path, weights=weights)
    assert by_reference.summary == in_process.summary  # its images_sha256: every per-image row equal
    assert np.array_equal(by_reference.take(pick), in_process.take(pick))
    out = cfg.logging.output_dir
    assert (tmp_path / "eval_grid.png").read_bytes() == (Path(out) / "eval_grid.png").read_bytes()


@pytest.mark.system
def test_groups_lost_with_their_rollout_actor_are_resampled(trainer):
    import ray

    results, pending_rewards = trainer.rollout(trainer.submit_rollout(0))
    os.kill(ray.get(trainer.rollouts[0].pid.remote()), signal.SIGKILL)  # it owned every group's images and latents
    scored = trainer.reward(results, pending_rewards)
    assert [s.result.request.group_index for s in scored] == list(range(8))
    groups, _ = trainer.advantage(scored)
    version = trainer.version
    trainer.update(groups, 0)  # the learner's tensors are sampled again before the update
    assert trainer.version == version + 1


@pytest.mark.system
def test_an_evaluation_whose_rollout_actor_dies_is_run_again_whole(trainer, capsys):
    full = trainer.cfg
    trainer.cfg = full.model_copy(update={"data": full.data.model_copy(update={"eval_num_prompts": 4})})  # 64 images
    try:
        _evaluation_survives_a_restart(trainer, capsys)
    finally:
        trainer.cfg = full


def _evaluation_survives_a_restart(trainer, capsys):
    import ray

    clean = trainer.evaluate(name="clean")
    real_sample, pid, killed = trainer._sample, ray.get(trainer.rollouts[0].pid.remote()), []

    def kill_then_gather(calls):  # the actor dies while it samples its share
        if not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
        return ray.get(calls)

    trainer._sample = lambda grid="eval": real_sample(grid, gather=kill_then_gather)
    try:
        again = trainer.evaluate(name="killed")
    finally:
        del trainer._sample
    assert "a rollout actor died during evaluation 'killed'" in capsys.readouterr().out
    assert killed and ray.get(trainer.rollouts[0].pid.remote()) != pid
    # the same images and verdicts as an evaluation that lost nothing
    def verdicts(evaluation):  # every per-image row but the test scorer's clock (TimedQuality's called_at)
        return [{k: v for k, v in row.items() if "called_at" not in k} for row in evaluation.rows]

    assert verdicts(again) == verdicts(clean)
    assert np.array_equal(again.take(list(again.kept)), clean.take(list(again.kept)))
