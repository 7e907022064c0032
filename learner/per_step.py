"""The per-step family's learner side (Flow-GRPO, DanceGRPO, MixGRPO, G2RPO): the stored SDE transitions
are recomputed under the current policy, one forward per distinct input, and fed to the algorithm's loss
(algorithms/per_step.py). The forward-process family's counterpart is learner/forward_process.py; the
worker's loop (learner/worker.py) calls a plan's rows / micro_batches / padding / loss, begin before and
end after the iteration's optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from common.data_plane import conditioning_of
from models.sde import kl_to_reference, sde_step
from models.types import PromptEmbeds, Rollout


@dataclass
class MicroBatch:
    """Transitions trained in one forward/backward; `inputs` holds each distinct x_t once."""

    inputs: torch.Tensor  # [U, ...]
    input_sigma: torch.Tensor  # [U]
    cond: PromptEmbeds  # [U] rows: each input's prompt conditioning as its rollout actor shipped it
    index: torch.Tensor  # [K] row of `inputs` per transition
    next_latents: torch.Tensor  # [K, ...]
    sigma: torch.Tensor  # [K]
    sigma_next: torch.Tensor  # [K]
    old_log_prob: torch.Tensor  # [K]
    advantages: torch.Tensor  # [K]
    weight: float = 1.0  # 0 for padding micro-batches
    rows: list[tuple[int, int, int]] = field(default_factory=list)  # (group, sample, transition) per row
    old_mean: torch.Tensor | None = None  # [K, ...] the sampler's step means, where the unit records them

    def __len__(self) -> int:
        return self.index.shape[0]


def flatten_transitions(groups) -> list[tuple[int, int, int]]:
    """(group, sample_id, transition) triples of every kept transition, grouped by sample."""
    rows = []
    for gi, group in enumerate(groups):
        t = group.rollout.transitions
        for j in range(len(t)):
            sid = int(t.sample_id[j])
            if bool(group.keep[sid]):
                rows.append((gi, sid, j))
    return rows


def build_micro_batches(groups, rows: list[tuple[int, int, int]], size: int) -> list[MicroBatch]:
    """Chunk transitions into micro-batches of at most `size`, sorted by shared input so that G2RPO's
    G branches at step k need one forward of x_k."""
    rows = sorted(rows, key=lambda r: (r[0], int(groups[r[0]].rollout.transitions.input_id[r[2]]), r[2]))
    out = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        keys: dict[tuple[int, int], int] = {}
        index = []
        for g, _, j in chunk:
            input_id = int(groups[g].rollout.transitions.input_id[j])
            index.append(keys.setdefault((g, input_id), len(keys)))
        ts = [(groups[g].rollout.transitions, j) for g, _, j in chunk]
        out.append(
            MicroBatch(
                inputs=torch.stack([groups[g].rollout.transitions.inputs[u] for g, u in keys]),
                input_sigma=torch.stack([_sigma_of_input(groups[g].rollout, u) for g, u in keys]),
                cond=conditioning_of(groups, [g for g, _ in keys]),
                index=torch.tensor(index),
                next_latents=torch.stack([t.next_latents[j] for t, j in ts]),
                sigma=torch.stack([t.sigma[j] for t, j in ts]),
                sigma_next=torch.stack([t.sigma_next[j] for t, j in ts]),
                old_log_prob=torch.stack([t.log_prob[j] for t, j in ts]),
                advantages=torch.stack([groups[g].advantages[s] for g, s, _ in chunk]).float(),
                rows=chunk,
                old_mean=torch.stack([t.mean[j] for t, j in ts]) if ts[0][0].mean is not None else None,
            )
        )
    return out


def _sigma_of_input(rollout: Rollout, input_id: int) -> torch.Tensor:
    t = rollout.transitions
    return t.sigma[(t.input_id == input_id).nonzero()[0, 0]]


class PerStepPlan:
    """How a learner rank trains a per-step algorithm: recomputed log-probs of the stored transitions."""

    def __init__(self, worker):
        self.worker = worker
        self.algorithm = worker.algorithm

    def setup(self) -> None:
        pass

    def begin(self, groups, iteration: int) -> None:
        # The step the rollout sampled with (its kind, noise level and log-prob form travel with it).
        s = self.worker.sampling
        self.noise_level = groups[0].rollout.noise_level if groups else s.noise_level
        self.kind = groups[0].rollout.sde_kind if groups else s.sde_kind
        self.form = groups[0].rollout.log_prob_form if groups else s.log_prob_form

    def end(self) -> None:
        pass

    def rows(self, groups) -> list[tuple[int, int, int]]:
        return flatten_transitions(groups)

    def prepare(self, groups, rows):
        """The groups to train on: with algorithm.recompute_old_log_probs, their old log-probs recomputed."""
        return self._recompute_old_log_probs(groups, rows) if self.algorithm.recompute_old_log_probs else groups

    def micro_batches(self, groups, rows: list[tuple[int, int, int]]) -> list[MicroBatch]:
        return build_micro_batches(groups, rows, self.worker.cfg.micro_batch_size)

    def _step(self, mb: MicroBatch, reference: bool = False):
        """The SDE step of every transition under the current (or the reference) policy: one forward per
        distinct input, log-probs (in the rollout's log_prob_form) of the stored x_next."""
        w = self.worker
        dev = w.device
        x_in = mb.inputs.to(dev)
        v = w.policy.velocity(x_in, mb.input_sigma.to(dev), mb.cond, reference=reference)
        index = mb.index.to(dev)
        return sde_step(
            v[index], x_in[index], mb.sigma.to(dev), mb.sigma_next.to(dev), noise_level=self.noise_level,
            kind=self.kind, prev_sample=mb.next_latents.to(dev), log_prob_form=self.form,
        )  # fmt: skip

    def loss(self, mb: MicroBatch):
        learner, dev = self.worker.cfg, self.worker.device
        out = self._step(mb)
        kl = None
        if learner.beta > 0:
            with torch.no_grad():
                ref = self._step(mb, reference=True)
            kl = kl_to_reference(out, ref.mean, self.algorithm.kl_form)
        # A padding micro-batch built from nothing has no recorded means: the current ones (a zero KL) stand in.
        old_mean = mb.old_mean.to(dev) if mb.old_mean is not None else out.mean.detach()
        return self.algorithm.loss(out.log_prob, mb.old_log_prob.to(dev), mb.advantages.to(dev), learner=learner,
                                   kl=kl, sigma=mb.sigma, mean=out.mean, old_mean=old_mean, std=out.std)

    @torch.no_grad()
    def _recompute_old_log_probs(self, groups, rows):
        """algorithm.recompute_old_log_probs: the current policy's log-probs of every transition, computed
        by the learner before its first step, replace the sampler's (verl's recompute of old_log_prob;
        for when sampler and learner numerics drift apart). Ranks run equally many forwards (ZeRO-3
        gathers parameters in each)."""
        fresh = [g.rollout.transitions.log_prob.clone() for g in groups]
        mbs = build_micro_batches(groups, rows, self.worker.cfg.micro_batch_size)
        mbs += [self.padding(mbs)] * (self.worker._agree_on_micro_batches(len(mbs)) - len(mbs))
        for mb in mbs:
            log_prob = self._step(mb).log_prob.float().cpu()
            for (g, _, j), value in zip(mb.rows, log_prob, strict=False):  # padding has weight 0 and no rows
                fresh[g][j] = value
        return [
            replace(g, rollout=replace(g.rollout, transitions=replace(g.rollout.transitions, log_prob=lp)))
            for g, lp in zip(groups, fresh, strict=True)
        ]

    def padding(self, like: list[MicroBatch]) -> MicroBatch:
        """A zero-weight micro-batch: a real forward/backward so ZeRO's hooks fire, contributing nothing."""
        if like:
            mb = like[0]
            return MicroBatch(**{**mb.__dict__, "weight": 0.0, "rows": []})
        policy = self.worker.policy
        zeros = torch.zeros(policy.latent_shape(1))
        one = torch.ones(1)
        return MicroBatch(zeros, one * 0.5, policy.blank_conditioning(), torch.zeros(1, dtype=torch.long),
                          zeros, one * 0.5, one * 0.25, torch.zeros(1), torch.zeros(1), weight=0.0)

    def sampling_source(self) -> None:
        """The rollout actors sample with the trained weights themselves."""
        return None

    def state(self) -> None:
        return None

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        raise ValueError("a per-step algorithm keeps no sampling-policy state")
