"""The learner side of the forward-process family (DiffusionNFT, AWM): re-noise final samples, train the
velocity with the algorithm's loss (algorithms/forward_process.py), and keep the sampling ("old") policy.

Each kept sample x0 of a group is trained at K = algorithm.train_timesteps sigmas drawn without replacement
from the sampling schedule, each with fresh noise eps: x_t = (1 - s) x0 + s eps, target eps - x0 (NVlabs
train_nft_sd3.py: a per-sample permutation of the schedule's timesteps, the first int(T * 0.99) trained).
The draws are a pure function of (run seed, iteration, group index, sample id), so a resumed run or
another split across learner ranks trains on exactly the same x_t.

The sampling policy's velocity v_old(x_t) is evaluated on the learner by copying its weights into the
trainable parameters in place under no_grad and copying the trained ones back bit for bit (`swapped_in`):
both copies live on the rank's device, so a micro-batch costs two device copies of the trainable weights,
not a round trip through the host. algorithm.old_policy:
- 'current': the weights at the start of the iteration's update (what sampled the rollout when it is
  on-policy); AWM's ratio is then exactly 1 at the first optimizer step.
- 'ema': DiffusionNFT's EMA of the trained weights, updated after every iteration with NVlabs'
  `return_decay` schedule; these are the weights the rollout actors sample with (`sampling_source`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from common.data_plane import conditioning_of
from models.schedule import sd3_sigmas
from models.seeding import derive_seed
from models.types import PromptEmbeds

Draw = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class FlowMatchBatch:
    """(sample, timestep) rows trained in one forward/backward."""

    x0: torch.Tensor  # [N, ...] final samples
    cond: PromptEmbeds  # [N] rows: each sample's prompt conditioning as its rollout actor shipped it
    sigma: torch.Tensor  # [N] float32
    noise: torch.Tensor  # [N, ...] eps
    advantages: torch.Tensor  # [N]
    weight: float = 1.0  # 0 for padding micro-batches
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # a group-coupled unit's per-row tensors [N]

    def __len__(self) -> int:
        return self.sigma.shape[0]


def training_draws(
    seed: int, iteration: int, group_index: int, sample_id: int | None, schedule: torch.Tensor, k: int, shape: tuple,
    *, stratified: bool = False, fraction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K sigmas of `schedule` and K noises [K, *shape] for one sample (sample_id None: the draws its whole
    group shares), seeded by (seed, iteration, group, sample) on a CPU generator (device-independent).
    The sigmas come from the first ceil(fraction * T) schedule entries (the noisiest): K distinct ones at
    random, or with `stratified` one at random from each of K equal consecutive strata (V-GRPO)."""
    eligible = max(1, math.ceil(fraction * schedule.numel() - 1e-9))  # 0.7 * 10 is 7.000000000000001
    if not 1 <= k <= eligible:
        raise ValueError(f"algorithm.train_timesteps ({k}) must lie in [1, {eligible}] (the eligible sampling schedule)")
    key = ("group",) if sample_id is None else (sample_id,)
    gen = torch.Generator().manual_seed(derive_seed(seed, "forward_process", iteration, group_index, *key))
    if stratified:
        strata = torch.tensor_split(torch.arange(eligible), k)
        index = torch.stack([st[torch.randint(st.numel(), (1,), generator=gen)[0]] for st in strata])
    else:
        index = torch.randperm(eligible, generator=gen)[:k]
    return schedule[index].float(), torch.randn((k, *shape), generator=gen, dtype=torch.float32)


def old_policy_decay(step: int, flat: int, rate: float, ceiling: float) -> float:
    """DiffusionNFT's sampling-policy EMA decay after `step` optimizer steps (NVlabs `return_decay`):
    0 during the first `flat` steps, then min(rate * (step - flat), ceiling)."""
    return 0.0 if step < flat else min(rate * (step - flat), ceiling)


def held_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sampling policy is kept in: bf16 weights average in fp32 (an EMA in bf16 would lose
    every update below its 8-bit mantissa), others in their own."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def snapshot(live: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A private copy of the live trainable weights, on their device, in `held_dtype`."""
    return {n: t.detach().to(held_dtype(t.dtype), copy=True) for n, t in live.items()}


def ema_step(old: dict[str, torch.Tensor], live: dict[str, torch.Tensor], decay: float) -> None:
    """old <- decay * old + (1 - decay) * live, element by element in old's dtype (two products and a sum,
    never fused, so it rounds as NumPy does)."""
    with torch.no_grad():
        for name, value in live.items():
            old[name] = decay * old[name] + (1.0 - decay) * value.detach().to(old[name].dtype)


@contextmanager
def swapped_in(live: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run the block with `weights` copied into the live tensors (cast to their dtype, as a load does);
    the live values are copied back bit for bit afterwards, also when the block raises."""
    with torch.no_grad():
        kept = {n: t.detach().clone() for n, t in live.items()}
        for n, t in live.items():
            t.copy_(weights[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for n, t in live.items():
                t.copy_(kept[n])


def flatten_samples(groups, k: int) -> list[tuple[int, int, int]]:
    """(group, sample_id, timestep j) triples of every kept sample, j in [0, K)."""
    return [(gi, s, j) for gi, g in enumerate(groups) for s in range(g.rollout.num_samples) if bool(g.keep[s])
            for j in range(k)]


def build_flow_batches(
    groups, rows: list[tuple[int, int, int]], size: int, draw: Draw,
    terms: dict[tuple[int, int, int], dict[str, torch.Tensor]] | None = None,
) -> list[FlowMatchBatch]:
    """Chunk rows into micro-batches of at most `size`; `draw(group, sample)` gives that sample's draws,
    `terms` (when given) each row's precomputed tensors (0-dim each)."""
    cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    out = []
    rows = sorted(rows)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        for g, s, _ in chunk:
            if (g, s) not in cache:
                cache[(g, s)] = draw(g, s)
        draws = [cache[(g, s)] for g, s, _ in chunk]
        out.append(FlowMatchBatch(
            x0=torch.stack([groups[g].rollout.final_latents[s] for g, s, _ in chunk]).float(),
            cond=conditioning_of(groups, [g for g, _, _ in chunk]),
            sigma=torch.stack([d[0][j] for d, (_, _, j) in zip(draws, chunk, strict=True)]),
            noise=torch.stack([d[1][j] for d, (_, _, j) in zip(draws, chunk, strict=True)]),
            advantages=torch.stack([groups[g].advantages[s] for g, s, _ in chunk]).float(),
            terms={} if terms is None else {
                name: torch.stack([terms[r][name] for r in chunk]) for name in terms[chunk[0]]},
        ))  # fmt: skip
    return out


class ForwardProcessPlan:
    """How a learner rank trains a forward-process loss (the worker's loop calls rows / micro_batches /
    padding / loss, begin before and end after the iteration's optimizer steps)."""

    def __init__(self, worker):
        self.worker, self.cfg, self.algorithm = worker, worker.cfg, worker.algorithm
        self.schedule = sd3_sigmas(worker.sampling.num_steps, worker.sampling.shift)[:-1]
        self.old: dict[str, torch.Tensor] | None = None  # the sampling policy's weights, on the rank's device
        self.iteration = 0
        self.terms: dict[tuple[int, int, int], dict[str, torch.Tensor]] | None = None  # group-coupled units'

    def setup(self) -> None:
        """At the start both policies are the initial weights."""
        self.old = snapshot(self.worker.policy.trainable_tensors())

    def begin(self, groups, iteration: int) -> None:
        self.iteration = iteration
        if not self.algorithm.sampling_policy_is_separate:  # 'current': on-policy at each iteration's start
            self.old = snapshot(self.worker.policy.trainable_tensors())

    def end(self) -> None:
        if self.algorithm.sampling_policy_is_separate:
            c = self.algorithm
            decay = old_policy_decay(self.worker.engine.global_steps, c.old_policy_decay_flat,
                                     c.old_policy_decay_rate, c.old_policy_decay_max)
            ema_step(self.old, self.worker.policy.trainable_tensors(), decay)

    def rows(self, groups) -> list[tuple[int, int, int]]:
        return flatten_samples(groups, self.algorithm.train_timesteps)

    def prepare(self, groups, rows):
        """A group-coupled unit's per-row terms, from no-grad forwards over every row of the iteration at the
        weights the update starts from (all of a group's rows are on this rank: groups are never split)."""
        self.terms = self._group_terms(groups, rows) if self.algorithm.group_coupled else None
        return groups

    def _draw(self, groups):
        spec = self.algorithm.draws()

        def draw(g: int, s: int):
            x0 = groups[g].rollout.final_latents
            return training_draws(self.worker.seed, self.iteration, groups[g].group_index, None if spec.shared else s,
                                  self.schedule, self.algorithm.train_timesteps, tuple(x0.shape[1:]),
                                  stratified=spec.stratified, fraction=spec.fraction)

        return draw

    def micro_batches(self, groups, rows) -> list[FlowMatchBatch]:
        return build_flow_batches(groups, rows, self.cfg.micro_batch_size, self._draw(groups), self.terms)

    def _group_terms(self, groups, rows) -> dict[tuple[int, int, int], dict[str, torch.Tensor]]:
        """`algorithm.group_terms` over every row: per micro-batch the unit's row statistics (a few numbers a
        row, never the velocities), then the terms of each block (the rows of one group and one draw j)."""
        policy, dev = self.worker.policy, self.worker.device
        stats: list[dict[str, torch.Tensor]] = []
        ordered = sorted(rows)
        for mb in build_flow_batches(groups, ordered, self.cfg.micro_batch_size, self._draw(groups)):
            x_t, eps, x0 = self._noised(mb)
            sigma = mb.sigma.to(dev)
            with torch.no_grad():
                v = policy.velocity(x_t, sigma, mb.cond)
                # 'current': the sampling policy is the live weights at the update's start
                v_old = self._old_velocity(x_t, sigma, mb.cond) if self.algorithm.sampling_policy_is_separate else v
                v_ref = policy.velocity(x_t, sigma, mb.cond, reference=True)
                stats.append(self.algorithm.row_statistics(v, v_old, v_ref, eps - x0, sigma))
        blocks = {key: b for b, key in enumerate(dict.fromkeys((g, j) for g, _, j in ordered))}
        block = torch.tensor([blocks[(g, j)] for g, _, j in ordered], device=dev)
        size = torch.tensor([float(groups[g].rollout.num_samples) for g, _, _ in ordered], device=dev)
        adv = torch.stack([groups[g].advantages[s] for g, s, _ in ordered]).float().to(dev)
        merged = {name: torch.cat([st[name] for st in stats]) for name in stats[0]} if stats else {}
        terms = self.algorithm.group_terms(merged, adv, block, size) if stats else {}
        return {row: {name: t[i] for name, t in terms.items()} for i, row in enumerate(ordered)}

    def _noised(self, mb: FlowMatchBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_t = (1 - s) x0 + s eps for the batch's rows, with eps and x0, on the rank's device."""
        dev = self.worker.device
        x0, eps, sigma = mb.x0.to(dev), mb.noise.to(dev), mb.sigma.to(dev)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        return (1.0 - s) * x0 + s * eps, eps, x0

    def padding(self, like: list[FlowMatchBatch]) -> FlowMatchBatch:
        """A zero-weight micro-batch (see LearnerWorker._padding)."""
        if like:
            return replace(like[0], weight=0.0)
        zeros = torch.zeros(self.worker.policy.latent_shape(1))
        return FlowMatchBatch(zeros, self.worker.policy.blank_conditioning(), torch.full((1,), 0.5), zeros,
                              torch.zeros(1), weight=0.0)

    def loss(self, mb: FlowMatchBatch):
        policy, dev, algorithm = self.worker.policy, self.worker.device, self.algorithm
        x_t, eps, x0 = self._noised(mb)
        sigma, cond = mb.sigma.to(dev), mb.cond
        with torch.no_grad():
            v_old = self._old_velocity(x_t, sigma, cond) if algorithm.needs_old_velocity else None
            v_ref = policy.velocity(x_t, sigma, cond, reference=True) if self.cfg.beta > 0 else None  # the KL's
        v = policy.velocity(x_t, sigma, cond)
        terms = {k: t.to(dev) for k, t in mb.terms.items()} or None
        return algorithm.loss(v, v_old, eps - x0, sigma, mb.advantages.to(dev), learner=self.cfg, v_ref=v_ref,
                              terms=terms)

    def _old_velocity(self, x_t, sigma, cond) -> torch.Tensor:
        policy = self.worker.policy
        with swapped_in(policy.trainable_tensors(), self.old):
            return policy.velocity(x_t, sigma, cond)

    def sampling_source(self) -> dict[str, torch.Tensor] | None:
        """The weights the rollout actors sample with when they are not the trained ones: the EMA
        (old_policy 'ema', on the device in `held_dtype`; weight sync casts it to the weights' own dtype)."""
        return self.old if self.algorithm.sampling_policy_is_separate else None

    def state(self) -> dict[str, np.ndarray] | None:
        """What a checkpoint must keep to resume exactly: the EMA sampling policy (as host arrays)."""
        if not self.algorithm.sampling_policy_is_separate:
            return None
        return {k: v.detach().cpu().numpy() for k, v in self.old.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        live = self.worker.policy.trainable_tensors()
        self.old = {k: torch.from_numpy(np.array(v, copy=True)).to(live[k].device) for k, v in state.items()}
