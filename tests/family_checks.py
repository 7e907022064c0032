"""What every model family's test checks, written once (tests/test_family_qwen_image.py,
tests/test_family_z_image.py and tests/test_family_wan.py call these with their own tiny pipeline and preset):

- `shipped_velocity_is_the_encoders`: a learner's transformer-only policy, given the conditioning a rollout
  actor ships through the data plane (prompts of different lengths, with the negative prompt for CFG), computes
  the velocity the full policy computes from its own text encoders, bit for bit, and the reference velocity too;
- `run_system`: the family's preset shrunk to the tiny model on a real local Ray (one rollout actor, one
  DeepSpeed learner rank, weight sync), checking after every iteration that the rollout actor holds the
  learner's weights; `resumes_bit_exactly`: 2 iterations straight against 1, stop, resume, 1 more.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from safetensors.torch import load_file

from cluster.config import REPO_ROOT, load_config
from cluster.trainer import Trainer
from common.weight_buckets import weights_digest
from models.config import ModelConfig
from models.policy import Policy
from models.types import PromptEmbeds
from tests.test_strategies import cfg_for, run
from tests.tiny_models import SMALL_EVAL

# Prompts of different token counts: their rows are padded against each other in a batch.
PROMPTS = ["a red circle", "a photo of two blue squares left of a green triangle"]


def saturate_decoder(vae: torch.nn.Module, gain: float = 100.0) -> None:
    """Scale the VAE decoder's last convolution: a random decoder's pixels sit near grey, which the cheap reward of
    the system tests (shapes_quality: the fraction of pixels that snap to the palette or the background) scores 0
    everywhere, leaving no reward variance and nothing to train. Saturated, each pixel is a corner colour."""
    last = [m for m in vae.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
    with torch.no_grad():
        last.weight.mul_(gain)
        last.bias.mul_(gain)


def saved_pipeline(tmp_path_factory, name: str, build: Callable[[], Any]) -> str:
    """A tiny random pipeline, built by `build` after seeding 0, its decoder saturated, saved into a fresh folder
    `name`: the path a test's `from_pretrained` loads."""
    torch.manual_seed(0)
    pipe = build()
    saturate_decoder(pipe.vae)
    folder = tmp_path_factory.mktemp(name)
    pipe.save_pretrained(folder)
    return str(folder)


def perturb(policy: Policy, seed: int = 1) -> None:
    """LoRA's B starts at zero (adapters are the identity); full fine-tuning starts at the base: make them differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))


def shipped_velocity_is_the_encoders(model: ModelConfig) -> None:
    from common.data_plane import LearnerPayload, strip

    torch.manual_seed(0)
    full, learner = Policy.from_config(model), Policy.from_config(model, transformer_only=True)
    assert [type(m).__name__ for m in learner.modules()] == [type(full.transformer).__name__]  # no encoder, no VAE
    assert learner.latent_shape(2) == full.latent_shape(2)  # the VAE's scale, read from its config alone
    perturb(full)
    learner.load_trainable(full.export_trainable())
    shipped = []
    for prompt in PROMPTS:  # what a learner rank receives: each group's conditioning through its payload
        record = replace(run(cfg_for("flow_grpo", group_size=2, num_steps=2)), conditioning=full.conditioning(prompt))
        shipped.append(LearnerPayload.of(record).restore(strip(record)).conditioning)
    assert shipped[0].negative is not None and shipped[0].embeds.dtype == full.dtype
    cond = PromptEmbeds.cat(shipped)  # a micro-batch of two groups
    if shipped[0].mask is not None:  # an LLM encoder's prompts of their own lengths: the short row padded and masked
        lengths = [int(c.mask.sum()) for c in shipped]
        assert lengths[0] < lengths[1] and all(bool(c.mask.all()) for c in shipped)  # each row at its own length
        assert cond.embeds.shape[1] == lengths[1] and int(cond.mask[0].sum()) == lengths[0]
    else:  # a T5 padded to a fixed length (Wan's UMT5), the padding part of the input
        assert {c.embeds.shape[1] for c in shipped} == {model.max_sequence_length} and cond.mask is None
    x = full.initial_noise(2, torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.9, 0.4])
    own = full.velocity_fn(PROMPTS)(x, sigma)  # the rollout actor: its own encoders and negative prompt
    assert torch.isfinite(own).all() and own.abs().mean() > 0
    assert torch.equal(learner.velocity(x, sigma, cond), own)
    if model.lora.enabled:  # the KL reference: the same transformer with its adapters off, on both sides
        assert torch.equal(learner.velocity(x, sigma, cond, reference=True), full.reference_velocity_fn(PROMPTS)(x, sigma))


def system_config(preset: str, path: str, out: Path, **over):
    """`preset` shrunk to the tiny model: one rollout actor and one learner rank (cluster.layout split, so the
    weights are synced), groups of 4, 3 steps, fp32, a cheap reward."""
    overrides = [
        f"model.path={path}", "model.dtype=float32", "model.resolution=32", "model.max_sequence_length=32",
        "model.lora.rank=4", "model.lora.alpha=8", "model.gradient_checkpointing=false",
        "sampling.group_size=4", "sampling.num_steps=3", "sampling.eval_num_steps=3",
        "data.images_per_iteration=8", "data.eval_num_prompts=2", "data.eval_images_per_prompt=1", "iterations=2",
        "rewards.scorers=[{name: shapes_quality}]", "learner.precision=fp32", "learner.learning_rate=1e-2",
        "learner.micro_batch_size=4", "learner.ema_decay=null", "cluster.layout=split", "cluster.num_learner_ranks=1",
        "cluster.num_rollout_actors=1", "cluster.learner_num_gpus=0", "cluster.learner_num_cpus=0.5",
        "cluster.rollout_num_cpus=0.5", "cluster.torch_threads_per_actor=1", "logging.tensorboard=false",
        "logging.eval_base=false", f"logging.output_dir={out}", *SMALL_EVAL,
    ]
    return load_config(REPO_ROOT / "configs" / f"{preset}.yaml", overrides + [f"{k}={v}" for k, v in over.items()])


def _digest(actor, method: str) -> str:
    state = ray.get(getattr(actor, method).remote())
    return weights_digest({k: torch.tensor(np.asarray(v)) for k, v in state.items()})  # a writable copy


def run_system(cfg, resume: bool = False, stop_after: int | None = None) -> list[tuple[str, str]]:
    """Train `cfg` (or resume it); after each iteration, the learner's and the rollout actor's weight digests."""
    seen = []
    with Trainer(cfg, resume=resume) as trainer:
        before = _digest(trainer.learners[0], "export_weights")
        assert _digest(trainer.rollouts[0], "weights") == before  # setup's first sync

        def stop(metrics: dict) -> bool:
            assert all(np.isfinite(v) for k, v in metrics.items() if k.startswith("policy/"))
            seen.append((_digest(trainer.learners[0], "export_weights"), _digest(trainer.rollouts[0], "weights")))
            return stop_after is not None and len(seen) == stop_after

        trainer.train(stop=stop)
    return [(before, before)] + seen


def trains_and_syncs(cfg) -> None:
    digests = run_system(cfg)
    assert len(digests) == cfg.iterations + 1
    assert all(learner == rollout for learner, rollout in digests)  # every sync reached the rollout actor
    assert digests[-1][0] != digests[0][0]  # and the weights changed
    lines = [json.loads(x) for x in (Path(cfg.logging.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == list(range(cfg.iterations))


def resumes_bit_exactly(preset: str, path: str, tmp: Path, **over) -> None:
    straight = system_config(preset, path, tmp / "straight", **{"logging.checkpoint_every": 1, **over})
    stopped = system_config(preset, path, tmp / "stopped", **{"logging.checkpoint_every": 1, **over})
    run_system(straight)
    run_system(stopped, stop_after=1)
    run_system(stopped, resume=True)
    a = load_file(tmp / "straight" / "checkpoints" / "iter_000002" / "trainable.safetensors")
    b = load_file(tmp / "stopped" / "checkpoints" / "iter_000002" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the resumed run trained other weights"
    rewards = [[json.loads(x)["reward/mean"] for x in (tmp / d / "metrics.jsonl").read_text().splitlines()]
               for d in ("straight", "stopped")]
    assert rewards[0] == rewards[1]


def available_gib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def one_bf16_iteration_at_published_width(path: str, model: dict, algorithm: dict, tmp: Path, needs_gib: float,
                                         masked: bool = True) -> None:
    """tests/test_real_width.py's check for a family at its published widths (scripts/build_real_width.py): one bf16
    iteration in process (rollout with the learner's synced weights, any reward, the update, sync, checkpoint),
    on-policy up to bf16 rounding. `masked`: the family's prompts carry a mask (LLM encoders; not a padded T5)."""
    import os

    import pytest

    from algorithms import ALGORITHMS
    from learner.advantages import grpo_advantages
    from learner.config import LearnerConfig
    from learner.engine import free_port
    from learner.worker import LearnerWorker, TrainGroup
    from models.config import SamplingConfig
    from rollout.worker import GroupRequest, RolloutWorker

    if available_gib() < needs_gib:  # a developer's busy machine may skip; CI's 24 GiB machine must run it
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"needs ~{needs_gib:.0f} GiB free, {available_gib():.1f} available")
    model = ModelConfig(path=path, dtype="bfloat16", resolution=32, max_sequence_length=16, **model)
    sampling, unit = SamplingConfig(group_size=2, num_steps=3), ALGORITHMS[algorithm["name"]](**algorithm)
    learner = LearnerWorker(model, sampling, LearnerConfig(precision="bf16", zero_stage=1, micro_batch_size=2,
                                                           learning_rate=1e-5, beta=0.0), algorithm=unit, seed=0)
    learner.setup("127.0.0.1", free_port())
    rollout = RolloutWorker(model, sampling, algorithm=unit, torch_threads=2, precision="bf16", rows_per_forward=4)
    assert rollout.load_weights(learner.export_weights(), 0)["digest"] == learner.weights_digest()
    res = rollout.rollout([GroupRequest(0, PROMPTS[1], {}, seed=1, iteration=0)])[0]
    r = res.rollout
    assert (r.conditioning.mask is not None) == masked and r.conditioning.negative is not None
    rewards = torch.from_numpy(res.images.reshape(len(res.images), -1).mean(1).astype(np.float32))  # any reward
    adv = grpo_advantages(rewards, r.reward_group, r.image_sample_id, r.num_samples)
    metrics = learner.train([TrainGroup(res.request.prompt, r, adv, torch.ones(r.num_samples, dtype=torch.bool), 0)],
                            iteration=0)
    assert np.isfinite(metrics["policy/loss"]) and metrics["learner/optimizer_steps"] == 1.0
    assert abs(metrics["learner/first_minibatch_ratio_mean"] - 1.0) < 1e-2  # bf16: on-policy up to rounding
    assert rollout.load_weights(learner.export_weights(), learner.get_version())["digest"] == learner.weights_digest()
    learner.save_checkpoint(str(tmp))
    assert (tmp / "trainable.safetensors").is_file()
