"""G2RPO (Granular GRPO, arXiv 2510.01982): Singular Stochastic Sampling + Multi-Granularity Advantage
Integration. One ODE anchor trajectory per prompt; at each k in M, G branches take ONE SDE step from the
anchor's x_k, then ODE to the end at every granularity lambda in Lambda."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.per_step import PerStepAlgorithm
from models.sampling import Recorder, initial_noise, randn_like
from models.schedule import granular_grid
from models.sde import ode_step, sde_step
from models.types import Rollout


@dataclass
class _Tail:
    """The G branches of one (k, lambda) group on their ODE tail; grid[pos] is their current sigma."""

    x: torch.Tensor
    grid: torch.Tensor
    pos: int
    group: tuple[int, int]  # (index of k in M, index of lambda in Lambda)

    @property
    def done(self) -> bool:
        return self.pos == self.grid.numel() - 1


def g2rpo_nfe(num_steps: int, steps: Sequence[int], granularities: Sequence[int], group_size: int) -> int:
    """G2RPO NFE per prompt: T + G * sum_{k in M} (1 + sum_{lambda in Lambda} ceil((T - k - 1) / lambda)).

    The anchor takes T evaluations. Each k adds G branch steps (one evaluation per branch at x_k) and,
    per lambda, a G-branch ODE tail from sigma_{k+1} on `granular_grid`: its evaluation points are
    sigma_{k+1}, then sigma[k+2::lambda] without the final point (moved to 0, the step that needs no
    further evaluation), i.e. ceil((T - k - 1) / lambda) of them. For T = 16, M = {0..7}, G = 12:
    Lambda = {1, 2} gives 16 + 12 * (8 + 92 + 48) = 1792; adding lambda = 3 (33) gives 2188.
    All of it runs in T batched calls (see `g2rpo`).
    """
    per_branch = sum(1 + sum(math.ceil((num_steps - k - 1) / lam) for lam in granularities) for k in steps)
    return num_steps + group_size * per_branch


def g2rpo_max_rows(group_size: int, num_steps: int, steps: Sequence[int], granularities: Sequence[int]) -> int:
    """Most latents in one G2RPO velocity call (`G2RPO.sample`): the anchor, the G branch
    inputs when the call is a branch step, and G rows for every tail still running; a tail started at
    step k with stride lambda takes ceil((T - k - 1) / lambda) ODE steps from call k + 1 on."""
    most = 0
    for c in range(num_steps):
        running = sum(1 for k in steps for lam in granularities if k < c <= k + math.ceil((num_steps - k - 1) / lam))
        most = max(most, 1 + (group_size if c in steps else 0) + group_size * running)
    return most


@register_algorithm
class G2RPO(PerStepAlgorithm):
    """G2RPO: one SDE branch step at each k in M from an ODE anchor, ODE tails at several granularities.

    Image (k, lambda, b) is scored in reward group (k, lambda) and adds its advantage to sample
    (k, b): the z-score within each (k, lambda) group of G branches is summed over lambda by the shared
    estimator (learner/advantages.py), whose groups and sample ids this strategy's record defines."""

    default_same_latent: ClassVar[bool] = True  # one anchor per prompt
    legacy_keys: ClassVar[dict[str, str]] = {
        **PerStepAlgorithm.legacy_keys, "sampling.g2rpo_steps": "steps", "sampling.g2rpo_granularities": "granularities",
    }

    name: Literal["g2rpo"] = "g2rpo"
    steps: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3], description="M: the step indices that get one SDE branch step."
    )
    granularities: list[int] = Field(
        default_factory=lambda: [1, 2], description="Lambda: ODE strides after the branch step."
    )

    def check(self, cfg) -> None:
        num_steps = cfg.sampling.num_steps
        if not self.steps:
            raise ValueError("algorithm.steps (M) is empty: list at least one step index")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"algorithm.steps (M) has repeated steps: {self.steps}")
        if not self.granularities or min(self.granularities) < 1:
            raise ValueError("algorithm.granularities (Lambda) must be a non-empty list of strides >= 1")
        if len(set(self.granularities)) != len(self.granularities):
            raise ValueError(f"algorithm.granularities (Lambda) has repeated strides: {self.granularities}")
        if max(self.steps) >= num_steps - 1 or min(self.steps) < 0:
            raise ValueError(f"algorithm.steps must lie in [0, sampling.num_steps - 2] = [0, {num_steps - 2}]")

    # ---- planner terms

    def images_per_group(self, group_size: int) -> int:
        return group_size * len(self.steps) * len(self.granularities)

    def rollout_latents_per_call(self, sampling) -> int:
        return g2rpo_max_rows(sampling.group_size, sampling.num_steps, self.steps, self.granularities)

    def learner_inputs_per_micro_batch(self, micro_batch_size: int, group_size: int) -> int:
        """The G branches at x_k share their input, and a micro-batch of rows sorted by input touches
        ceil(size / G) inputs, one more when it straddles."""
        size, g = micro_batch_size, group_size
        return min(size, -(-size // g) + (1 if size % g else 0))

    # ---- sampling

    def sample(self, sampling, velocity, init_noise, sigmas, generator, iteration) -> Rollout:
        """One ODE anchor trajectory per prompt. For each k in M, G branches take ONE SDE step from the
        anchor's x_k (fresh noise each), then ODE to sigma = 0 on `granular_grid(sigmas, k, lambda)` for
        every lambda in Lambda. Image (k, lambda, b) is scored in reward group (k, lambda) and adds its
        advantage to sample (k, b); the trained transition of sample (k, b) is its branch step, whose
        input x_k is shared by the G branches (stored once).

        Batching: every row is a latent of the same prompt and sigma is per row, so call c evaluates the
        anchor at sigma_c, the G branch inputs if c is in M, and every running tail at its own sigma. A tail
        started at k takes ceil((T - k - 1) / lambda) <= T - k - 1 steps, so all of it fits in the anchor's
        T calls.
        """
        g, num_steps = sampling.group_size, sigmas.numel() - 1
        ks, lams = list(self.steps), list(self.granularities)
        anchor = initial_noise(init_noise, 1, True, generator)
        recorder = Recorder()
        tails: list[_Tail] = []
        for c in range(num_steps):
            s, s_next = sigmas[c].item(), sigmas[c + 1].item()
            running = [t for t in tails if not t.done]
            x_k = anchor.expand(g, *anchor.shape[1:]) if c in ks else anchor[:0]
            xs = [anchor, x_k] + [t.x for t in running]
            sig = [torch.full((1 + x_k.shape[0],), s)] + [torch.full((g,), t.grid[t.pos].item()) for t in running]
            v_anchor, v_branch, *v_tails = velocity(torch.cat(xs), torch.cat(sig).to(anchor.device)).split(
                [x.shape[0] for x in xs]
            )
            if c in ks:
                ki = ks.index(c)
                out = sde_step(
                    v_branch,
                    x_k,
                    s,
                    s_next,
                    noise_level=sampling.noise_level,
                    kind=sampling.sde_kind,
                    noise=randn_like(x_k, generator),
                    log_prob_form=sampling.log_prob_form,
                )
                sample_id = ki * g + torch.arange(g)
                recorder.add(anchor, out.prev_sample, s, s_next, out.log_prob, sample_id, c, shared_input=True)
                tails += [
                    _Tail(out.prev_sample, granular_grid(sigmas, c, lam), c + 1, (ki, li))
                    for li, lam in enumerate(lams)
                ]
            for t, v in zip(running, v_tails, strict=True):
                t.x = ode_step(v, t.x, t.grid[t.pos].item(), t.grid[t.pos + 1].item())
                t.pos += 1
            anchor = ode_step(v_anchor, anchor, s, s_next)
        finished = {t.group: t.x for t in tails}
        ids = [(ki, li) for ki in range(len(ks)) for li in range(len(lams))]
        final = torch.cat([finished[i] for i in ids])
        k_idx = torch.tensor([ki for ki, _ in ids]).repeat_interleave(g)
        l_idx = torch.tensor([li for _, li in ids]).repeat_interleave(g)
        return Rollout(
            strategy=self.name,
            transitions=recorder.build(final),
            final_latents=final,
            reward_group=k_idx * len(lams) + l_idx,
            image_sample_id=k_idx * g + torch.arange(g).repeat(len(ids)),
            num_samples=len(ks) * g,
            sde_kind=sampling.sde_kind,
            noise_level=sampling.noise_level,
            nfe=velocity.nfe,
            velocity_calls=velocity.calls,
            image_info={"branch_step": torch.tensor(ks)[k_idx], "granularity": torch.tensor(lams)[l_idx]},
            anchor_latents=anchor,
            log_prob_form=sampling.log_prob_form,
        )
