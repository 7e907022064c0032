"""Trajectory machinery every sampling strategy shares, model-agnostic, one prompt group at a time.

A strategy (an algorithm unit's `sample`, algorithms/) gets the policy's guided velocity for ONE prompt,
v(x [N, ...], sigma [N]) -> [N, ...] (any N: every row is a latent of the same prompt; sigma is always a
float32 [N] tensor, one noise level per row, so rows at different steps can share a call), a function
drawing initial noise, init_noise(n, generator) -> [n, ...], the sigma schedule (models/schedule.py) and
the iteration number, and returns a `Rollout` (models/types.py). All randomness comes from the one
generator, drawn on the generator's device, so a seed gives the same rollout on any accelerator.

`sample_group` is the entry point. NFE is counted as the papers count it: one evaluation per latent per
step, identical latents included (a shared initial noise is still stepped once per group member).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from models.config import SamplingConfig
from models.schedule import check_sigmas
from models.sde import dpm_solver_2m_step, ode_step, sde_step
from models.types import Rollout, Transitions

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
InitNoiseFn = Callable[[int, torch.Generator], torch.Tensor]


def sample_group(
    strategy,
    sampling: SamplingConfig,
    velocity_fn: VelocityFn,
    init_noise: InitNoiseFn,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator,
    iteration: int = 0,
) -> Rollout:
    """Sample one prompt group with `strategy` (an algorithm unit: `strategy.sample(sampling, velocity,
    init_noise, sigmas, generator, iteration)`); `sigmas` has sampling.num_steps + 1 points."""
    sigmas = check_sigmas(sigmas, "sigmas", ends_at_zero=True)
    if sigmas.numel() - 1 != sampling.num_steps:
        raise ValueError(f"sigmas has {sigmas.numel() - 1} steps but sampling.num_steps is {sampling.num_steps}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    velocity = CountingVelocity(velocity_fn)
    rollout = strategy.sample(sampling, velocity, init_noise, sigmas, generator, iteration)
    return rollout.validate()


class CountingVelocity:
    """The velocity function with sigma lifted to a float32 [N] tensor, counting NFE and calls."""

    def __init__(self, velocity_fn: VelocityFn):
        self.velocity_fn = velocity_fn
        self.nfe = 0
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(x.device, torch.float32)
        else:  # filled on the device: a copy of a host number to an accelerator would wait for its queue
            sigma = torch.full((), float(sigma), dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        v = self.velocity_fn(x, sigma)
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for latents {tuple(x.shape)}")
        self.nfe += x.shape[0]
        self.calls += 1
        return v.float()


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the generator's device (CPU in practice) so the stream is device-independent; sent to a GPU
    # from pinned memory, so the copy queues behind the step instead of waiting for it.
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    if noise.device.type == "cpu" and x.device.type == "cuda":
        noise = noise.pin_memory()
    return noise.to(x.device, non_blocking=True)


def initial_noise(init_noise: InitNoiseFn, n: int, shared: bool, generator: torch.Generator) -> torch.Tensor:
    x = init_noise(1 if shared else n, generator).float()
    if x.shape[0] != (1 if shared else n):
        raise ValueError(f"init_noise returned {x.shape[0]} latents, expected {1 if shared else n}")
    return x.repeat(n, *([1] * (x.ndim - 1))) if shared else x


def sde_mode(kind: str, sigma_next: float) -> str:
    # A CPS step to sigma = 0 has zero variance: it is exactly the Euler step and has no density,
    # so it is taken deterministically and never recorded.
    return "ode" if kind == "cps" and sigma_next == 0 else "sde"


class Recorder:
    """Collects trained transitions; an input shared by several transitions is stored once."""

    def __init__(self, keep_means: bool = False) -> None:
        """`keep_means`: also keep each step's Gaussian mean (Transitions.mean)."""
        self.keep_means = keep_means
        self.means: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        self.input_id: list[torch.Tensor] = []
        self.fields: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("next_latents", "sigma", "sigma_next", "log_prob", "sample_id", "step")
        }
        self.num_inputs = 0

    def add(self, x_t, x_next, sigma, sigma_next, log_prob, sample_id, step, *, shared_input=False, mean=None):
        """Record rows x_t -> x_next; with `shared_input`, x_t is one [1, ...] latent all rows start from;
        `mean`: the step's Gaussian mean of those rows (kept with `keep_means`)."""
        if self.keep_means:
            if mean is None:
                raise ValueError("this recorder keeps each step's mean (keep_means=True): pass mean=")
            self.means.append(mean)
        n = x_next.shape[0]
        u = 1 if shared_input else n
        self.inputs.append(x_t[:u])
        self.input_id.append(
            self.num_inputs + (torch.zeros(n, dtype=torch.long) if shared_input else torch.arange(n))
        )
        self.num_inputs += u
        f = self.fields
        f["next_latents"].append(x_next)
        f["sigma"].append(torch.full((n,), sigma, dtype=torch.float32))
        f["sigma_next"].append(torch.full((n,), sigma_next, dtype=torch.float32))
        f["log_prob"].append(log_prob.float())
        f["sample_id"].append(torch.as_tensor(sample_id, dtype=torch.long))
        f["step"].append(torch.full((n,), step, dtype=torch.long))

    def build(self, like: torch.Tensor) -> Transitions:
        if not self.inputs:
            empty_latents = like.new_zeros((0, *like.shape[1:]))
            return Transitions(
                empty_latents,
                torch.zeros(0, dtype=torch.long),
                empty_latents,
                *(torch.zeros(0) for _ in range(3)),
                *(torch.zeros(0, dtype=torch.long) for _ in range(2)),
                mean=empty_latents if self.keep_means else None,
            )
        f = {k: torch.cat(v) for k, v in self.fields.items()}
        mean = torch.cat(self.means) if self.keep_means else None
        return Transitions(inputs=torch.cat(self.inputs), input_id=torch.cat(self.input_id), **f, mean=mean)


def integrate(
    velocity: CountingVelocity,
    x: torch.Tensor,
    grid: torch.Tensor,
    modes: Sequence[str],
    record: dict[int, list[int]],
    recorder: Recorder,
    cfg: SamplingConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Advance every row of x along `grid`, one batched velocity call per step.

    Step i is modes[i]: 'ode' (Euler), 'sde' (the configured SDE step) or 'dpm' (DPM-Solver++(2M),
    second order from the previous step's data prediction). record[i] lists the rows (= sample ids)
    whose step-i transition is trained; only 'sde' steps may be recorded.

    The grid (checked by the caller) is read to Python floats once, so the steps check their sigmas on
    the host and nothing in the loop waits for an accelerator (models/sde.py).
    """
    sigmas = grid.tolist()
    x0_prev = sigma_prev = None
    for i, mode in enumerate(modes):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = velocity(x, s)
        if mode == "sde":
            out = sde_step(
                v,
                x,
                s,
                s_next,
                noise_level=cfg.noise_level,
                kind=cfg.sde_kind,
                noise=randn_like(x, generator),
                log_prob_form=cfg.log_prob_form,
            )
            rows = record.get(i, [])
            if rows:
                # every row: no index (a list index is copied to the device, which waits for its queue)
                pick = slice(None) if rows == list(range(x.shape[0])) else rows
                recorder.add(x[pick], out.prev_sample[pick], s, s_next, out.log_prob[pick], rows, i,
                             mean=out.mean[pick] if recorder.keep_means else None)
            x_next = out.prev_sample
        elif mode == "dpm":
            x_next, _ = dpm_solver_2m_step(v, x, s, s_next, prev_x0=x0_prev, sigma_prev=sigma_prev)
        else:
            x_next = ode_step(v, x, s, s_next)
        x0_prev, sigma_prev = x - s * v, s
        x = x_next
    return x


def trajectory_rollout(name, cfg, velocity, recorder, final, *, learner_needs_final: bool = False) -> Rollout:
    """The record of G independent trajectories: image i is sample i, all in one reward group.
    `learner_needs_final`: the learner trains on the final latents (the forward-process family)."""
    g = final.shape[0]
    return Rollout(
        strategy=name,
        transitions=recorder.build(final),
        final_latents=final,
        reward_group=torch.zeros(g, dtype=torch.long),
        image_sample_id=torch.arange(g),
        num_samples=g,
        sde_kind=cfg.sde_kind,
        noise_level=cfg.noise_level,
        nfe=velocity.nfe,
        velocity_calls=velocity.calls,
        log_prob_form=cfg.log_prob_form,
        learner_needs_final=learner_needs_final,
    )


def window_modes(cfg: SamplingConfig, sigmas: torch.Tensor, start: int, size: int) -> list[str]:
    """SDE inside steps [start, start + size), ODE outside."""
    return [
        sde_mode(cfg.sde_kind, sigmas[i + 1].item()) if start <= i < start + size else "ode"
        for i in range(sigmas.numel() - 1)
    ]


def all_rows(modes: Sequence[str], steps: range, g: int) -> dict[int, list[int]]:
    return {i: list(range(g)) for i in steps if modes[i] == "sde"}


# ----------------------------------------------------------------------------- evaluation and NFE


def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic Euler ODE sampler (the evaluation sampler, T_eval steps): noise -> data."""
    sigmas = check_sigmas(sigmas, "sigmas", ends_at_zero=True).tolist()  # checked once; floats in the loop
    velocity, x = CountingVelocity(velocity_fn), noise.float()
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = ode_step(velocity(x, s), x, s, s_next)
    return x


def eval_sample(
    velocity_fn: VelocityFn, init_noise: InitNoiseFn, sigmas: torch.Tensor, *, seeds: Sequence[int]
) -> torch.Tensor:
    """Evaluation images: one Euler ODE sample per seed, image i starting from the noise of `seeds[i]` on a
    fresh CPU generator, so an image's noise depends on its own seed only (not on how many images, or which
    prompts, are sampled beside it): evaluations of two checkpoints pair image by image. `velocity_fn`
    conditions row by row: one prompt's rows, or several prompts' side by side (RolloutWorker.evaluate)."""
    if not seeds:
        raise ValueError("eval_sample needs at least one seed")
    noise = torch.cat([init_noise(1, torch.Generator().manual_seed(int(s))) for s in seeds])
    return euler_sample(velocity_fn, noise, sigmas)


def eval_batches(images_per_prompt: Sequence[int], max_latents: int) -> list[range]:
    """Consecutive prompts sampled together (RolloutWorker.evaluate), at most `max_latents` latents per
    batch; a prompt with more images than that is a batch of its own."""
    if any(n < 1 for n in images_per_prompt):
        raise ValueError(f"every evaluated prompt needs a seed, got image counts {list(images_per_prompt)}")
    batches, start, latents = [], 0, 0
    for i, n in enumerate(images_per_prompt):
        if i > start and latents + n > max_latents:
            batches.append(range(start, i))
            start, latents = i, 0
        latents += n
    return [*batches, range(start, len(images_per_prompt))] if images_per_prompt else []


def trajectory_nfe(num_steps: int, group_size: int) -> int:
    """NFE of G independent trajectories of T steps: T * G (flow_grpo, flow_grpo_fast, dance_grpo,
    mix_grpo without flash). One velocity call per step: T calls."""
    return num_steps * group_size


def recompute_log_probs(velocity_fn: VelocityFn, rollout: Rollout) -> torch.Tensor:
    """Log-probs of the stored transitions under `velocity_fn` -> [K], with one velocity evaluation per
    distinct input (what the learner does with gradients); equals the recorded ones on-policy."""
    t = rollout.transitions
    sigma_in = torch.empty(t.inputs.shape[0], dtype=torch.float32)
    sigma_in[t.input_id] = t.sigma
    v = CountingVelocity(velocity_fn)(t.inputs, sigma_in.to(t.inputs.device))
    out = sde_step(
        v[t.input_id],
        t.latents,
        t.sigma,
        t.sigma_next,
        noise_level=rollout.noise_level,
        kind=rollout.sde_kind,
        prev_sample=t.next_latents,
        log_prob_form=rollout.log_prob_form,
    )
    return out.log_prob


