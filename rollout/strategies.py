"""Sampling strategies of the Flow-GRPO family and G2RPO, model-agnostic, one prompt group at a time.

A strategy gets the policy's guided velocity for ONE prompt, v(x [N, ...], sigma [N]) -> [N, ...]
(any N: every row is a latent of the same prompt; sigma is always a float32 [N] tensor, one noise level
per row, so rows at different steps can share a call), a function drawing initial noise,
init_noise(n, generator) -> [n, ...], the sigma schedule (models/schedule.py) and the iteration
number, and returns a `Rollout` (models/types.py). All randomness comes from the one generator,
drawn on the generator's device, so a seed gives the same rollout on any accelerator.

Strategies are registered functions chosen by `SamplingConfig.strategy`; `sample_group` is the entry
point. NFE is counted as the papers count it: one evaluation per latent per step, identical latents
included (a shared initial noise is still stepped once per group member).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from models.config import SamplingConfig
from models.schedule import check_sigmas, compressed_tail, granular_grid
from models.sde import dpm_solver_2m_step, ode_step, sde_step
from models.seeding import derive_seed
from models.types import Rollout, Transitions

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
InitNoiseFn = Callable[[int, torch.Generator], torch.Tensor]
StrategyFn = Callable[..., Rollout]

STRATEGIES: dict[str, StrategyFn] = {}


def register_strategy(name: str) -> Callable[[StrategyFn], StrategyFn]:
    """Register `fn(cfg, velocity, init_noise, sigmas, generator, iteration) -> Rollout` under `name`."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = fn
        return fn

    return wrap


def sample_group(
    cfg: SamplingConfig,
    velocity_fn: VelocityFn,
    init_noise: InitNoiseFn,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator,
    iteration: int = 0,
) -> Rollout:
    """Sample one prompt group with the strategy `cfg.strategy` names; `sigmas` has num_steps + 1 points."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"sampling.strategy {cfg.strategy!r} is not registered; known: {sorted(STRATEGIES)}")
    sigmas = check_sigmas(sigmas, "sigmas", ends_at_zero=True)
    if sigmas.numel() - 1 != cfg.num_steps:
        raise ValueError(f"sigmas has {sigmas.numel() - 1} steps but sampling.num_steps is {cfg.num_steps}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    velocity = CountingVelocity(velocity_fn)
    rollout = STRATEGIES[cfg.strategy](cfg, velocity, init_noise, sigmas, generator, iteration)
    return rollout.validate()


# ----------------------------------------------------------------------------- shared machinery


class CountingVelocity:
    """The velocity function with sigma lifted to a float32 [N] tensor, counting NFE and calls."""

    def __init__(self, velocity_fn: VelocityFn):
        self.velocity_fn = velocity_fn
        self.nfe = 0
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        v = self.velocity_fn(x, sigma)
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for latents {tuple(x.shape)}")
        self.nfe += x.shape[0]
        self.calls += 1
        return v.float()


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the generator's device (CPU in practice) so the stream is device-independent.
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32).to(
        x.device
    )


def _initial_noise(init_noise: InitNoiseFn, n: int, shared: bool, generator: torch.Generator) -> torch.Tensor:
    x = init_noise(1 if shared else n, generator).float()
    if x.shape[0] != (1 if shared else n):
        raise ValueError(f"init_noise returned {x.shape[0]} latents, expected {1 if shared else n}")
    return x.repeat(n, *([1] * (x.ndim - 1))) if shared else x


def _sde_mode(kind: str, sigma_next: float) -> str:
    # A CPS step to sigma = 0 has zero variance: it is exactly the Euler step and has no density,
    # so it is taken deterministically and never recorded.
    return "ode" if kind == "cps" and sigma_next == 0 else "sde"


class _Recorder:
    """Collects trained transitions; an input shared by several transitions is stored once."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.input_id: list[torch.Tensor] = []
        self.fields: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("next_latents", "sigma", "sigma_next", "log_prob", "sample_id", "step")
        }
        self.num_inputs = 0

    def add(self, x_t, x_next, sigma, sigma_next, log_prob, sample_id, step, *, shared_input=False):
        """Record rows x_t -> x_next; with `shared_input`, x_t is one [1, ...] latent all rows start from."""
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
            )
        f = {k: torch.cat(v) for k, v in self.fields.items()}
        return Transitions(inputs=torch.cat(self.inputs), input_id=torch.cat(self.input_id), **f)


def _integrate(
    velocity: CountingVelocity,
    x: torch.Tensor,
    grid: torch.Tensor,
    modes: Sequence[str],
    record: dict[int, list[int]],
    recorder: _Recorder,
    cfg: SamplingConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Advance every row of x along `grid`, one batched velocity call per step.

    Step i is modes[i]: 'ode' (Euler), 'sde' (the configured SDE step) or 'dpm' (DPM-Solver++(2M),
    second order from the previous step's data prediction). record[i] lists the rows (= sample ids)
    whose step-i transition is trained; only 'sde' steps may be recorded.
    """
    x0_prev = sigma_prev = None
    for i, mode in enumerate(modes):
        s, s_next = grid[i].item(), grid[i + 1].item()
        v = velocity(x, s)
        if mode == "sde":
            out = sde_step(
                v,
                x,
                s,
                s_next,
                noise_level=cfg.noise_level,
                kind=cfg.sde_kind,
                noise=_randn_like(x, generator),
                log_prob_form=cfg.log_prob_form,
            )
            rows = record.get(i, [])
            if rows:
                recorder.add(x[rows], out.prev_sample[rows], s, s_next, out.log_prob[rows], rows, i)
            x_next = out.prev_sample
        elif mode == "dpm":
            x_next, _ = dpm_solver_2m_step(v, x, s, s_next, prev_x0=x0_prev, sigma_prev=sigma_prev)
        else:
            x_next = ode_step(v, x, s, s_next)
        x0_prev, sigma_prev = x - s * v, s
        x = x_next
    return x


def _trajectory_rollout(name, cfg, velocity, recorder, final) -> Rollout:
    """The record of G independent trajectories: image i is sample i, all in one reward group."""
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
    )


def _window_modes(cfg: SamplingConfig, sigmas: torch.Tensor, start: int, size: int) -> list[str]:
    """SDE inside steps [start, start + size), ODE outside."""
    return [
        _sde_mode(cfg.sde_kind, sigmas[i + 1].item()) if start <= i < start + size else "ode"
        for i in range(sigmas.numel() - 1)
    ]


def _all_rows(modes: Sequence[str], steps: range, g: int) -> dict[int, list[int]]:
    return {i: list(range(g)) for i in steps if modes[i] == "sde"}


# ----------------------------------------------------------------------------- Flow-GRPO


@register_strategy("flow_grpo")
def flow_grpo(cfg, velocity, init_noise, sigmas, generator, iteration) -> Rollout:
    """Flow-GRPO (Liu et al. 2025): the SDE (Eq. 9) at every one of the T_train steps; the
    first int(T * timestep_fraction) transitions are trained. Denoising reduction is T_train (here)
    vs T_eval (`euler_sample`)."""
    g, num_steps = cfg.group_size, sigmas.numel() - 1
    x = _initial_noise(init_noise, g, bool(cfg.same_latent), generator)
    modes = [_sde_mode(cfg.sde_kind, sigmas[i + 1].item()) for i in range(num_steps)]
    record = _all_rows(modes, range(int(num_steps * cfg.timestep_fraction)), g)
    recorder = _Recorder()
    final = _integrate(velocity, x, sigmas, modes, record, recorder, cfg, generator)
    return _trajectory_rollout("flow_grpo", cfg, velocity, recorder, final)


@register_strategy("flow_grpo_fast")
def flow_grpo_fast(cfg, velocity, init_noise, sigmas, generator, iteration) -> Rollout:
    """Flow-GRPO-Fast: ODE, then an SDE window of `window_size` steps, then ODE; only the window is
    stochastic and trained. The window lies inside `window_range` = [lo, hi): its start is drawn uniformly
    from [lo, hi - w], as flow_grpo's pipeline_with_logprob_fast does (random.randint(lo, hi - w)).

    The reference draws one window per pipeline call, i.e. per sampling batch, whose images mix several
    prompts (and a prompt's images span several batches); here each group draws its own window from its
    seed, so a group is reproducible on any actor (see docs/fidelity.md)."""
    g = cfg.group_size
    x = _initial_noise(init_noise, g, bool(cfg.same_latent), generator)
    lo, hi = cfg.window_range
    start = int(torch.randint(lo, hi - cfg.window_size + 1, (1,), generator=generator, device=generator.device).item())
    modes = _window_modes(cfg, sigmas, start, cfg.window_size)
    record = _all_rows(modes, range(start, start + cfg.window_size), g)
    recorder = _Recorder()
    final = _integrate(velocity, x, sigmas, modes, record, recorder, cfg, generator)
    return _trajectory_rollout("flow_grpo_fast", cfg, velocity, recorder, final)


# ----------------------------------------------------------------------------- DanceGRPO


@register_strategy("dance_grpo")
def dance_grpo(cfg, velocity, init_noise, sigmas, generator, iteration) -> Rollout:
    """DanceGRPO (Xue et al. 2025): the Dance SDE at every step from one initial noise shared
    by the group; each sample trains the first int((T - 1) * timestep_fraction) steps of its own random
    permutation of the first T - 1 steps, and the image is the last step's data prediction.

    As DanceGRPO's train_grpo_flux.py: the samples keep steps [:-1] (`samples["timesteps"][:, :-1]`),
    each is permuted with its own `randperm`, and `run_sample_step` returns `pred_original` of the last
    step, x0_hat = x_{T-1} - sigma_{T-1} v, for decoding, not the noisy SDE sample. So the last step only
    needs its velocity: no noise is drawn for it.
    """
    g, num_steps = cfg.group_size, sigmas.numel() - 1
    shared = True if cfg.same_latent is None else cfg.same_latent
    x = _initial_noise(init_noise, g, shared, generator)
    modes = [_sde_mode(cfg.sde_kind, sigmas[i + 1].item()) for i in range(num_steps - 1)]
    n_train = dance_grpo_trained_steps(num_steps, cfg.timestep_fraction)
    record: dict[int, list[int]] = {}
    for b in range(g):
        for i in torch.randperm(num_steps - 1, generator=generator, device=generator.device)[:n_train].tolist():
            if modes[i] == "sde":
                record.setdefault(i, []).append(b)
    recorder = _Recorder()
    x = _integrate(velocity, x, sigmas[:-1], modes, record, recorder, cfg, generator)
    s_last = sigmas[-2].item()
    final = x - s_last * velocity(x, s_last)
    return _trajectory_rollout("dance_grpo", cfg, velocity, recorder, final)


def dance_grpo_trained_steps(num_steps: int, fraction: float) -> int:
    """Steps trained per DanceGRPO sample: int((T - 1) * fraction), drawn from the first T - 1 steps."""
    return int((num_steps - 1) * fraction)


# ----------------------------------------------------------------------------- MixGRPO


def _check_window_args(iteration: int, num_steps: int, window_size: int, stride: int, every: int) -> None:
    for name, value, low in (
        ("iteration", iteration, 0),
        ("window_size", window_size, 1),
        ("stride", stride, 1),
        ("every", every, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if window_size > num_steps - 1:
        raise ValueError(f"window_size ({window_size}) must be <= num_steps - 1 = {num_steps - 1}")


def mix_grpo_window_start(iteration: int, num_steps: int, window_size: int, stride: int, every: int) -> int:
    """Start l of MixGRPO's sliding SDE window [l, l + w) at an iteration (Li et al. 2025), its
    'progressive' sample_strategy.

    The window starts at 0 and moves by the stride s every tau (`every`) iterations; once it would
    pass the last trainable step it rolls back to 0. The final step to sigma = 0 is never trained
    (MixGRPO's `ignore_last`), so l takes the values 0, s, 2s, ... <= T - 1 - w. (MixGRPO's code
    lets l reach T - 2 and truncates the window there; here the window is always whole.)
    """
    _check_window_args(iteration, num_steps, window_size, stride, every)
    positions = (num_steps - 1 - window_size) // stride + 1
    return stride * ((iteration // every) % positions)


def mix_grpo_random_window_start(iteration: int, num_steps: int, window_size: int) -> int:
    """MixGRPO's 'random' sample_strategy (fastvideo/utils/grpo_states.py): a start drawn uniformly from
    [0, (T - 2) - w] each iteration (their max_timesteps = T - 2). The draw is a fixed function of the
    iteration, so every rollout actor samples the iteration's groups in the same window (the reference
    draws once per iteration, unseeded)."""
    _check_window_args(iteration, num_steps, window_size, 1, 1)
    if window_size > num_steps - 2:
        raise ValueError(f"window_size ({window_size}) must be <= num_steps - 2 = {num_steps - 2} for the random window")
    gen = torch.Generator().manual_seed(derive_seed("mix_grpo_random_window", iteration))
    return int(torch.randint(0, num_steps - 2 - window_size + 1, (1,), generator=gen).item())


def mix_grpo_decay_window_start(
    iteration: int, num_steps: int, window_size: int, stride: int, every: int, every_min: int | None = None
) -> int:
    """MixGRPO's 'decay' sample_strategy (fastvideo/utils/grpo_states.py): the progressive window, but
    it stays at position l for max(tau_min, int(tau (1 - p) + tau_min p)) iterations, p = l / (T - 2), so
    the later (less noisy) positions get fewer iterations; tau_min defaults to max(1, tau // 4), as theirs."""
    _check_window_args(iteration, num_steps, window_size, stride, every)
    low = max(1, every // 4) if every_min is None else every_min
    positions = range(0, num_steps - window_size, stride)  # 0, s, 2s, ... <= T - 1 - w
    durations = [max(low, int(every * (1 - pos / (num_steps - 2)) + low * pos / (num_steps - 2))) for pos in positions]
    ends = list(itertools.accumulate(durations))  # the cycle rolls back to 0 after the last position
    return positions[bisect.bisect_right(ends, iteration % ends[-1])]


# sampling.window_strategy -> the MixGRPO window start at an iteration.
WINDOW_STRATEGIES = {
    "progressive": lambda cfg, it, t: mix_grpo_window_start(it, t, cfg.window_size, cfg.window_stride, cfg.window_every),
    "random": lambda cfg, it, t: mix_grpo_random_window_start(it, t, cfg.window_size),
    "decay": lambda cfg, it, t: mix_grpo_decay_window_start(
        it, t, cfg.window_size, cfg.window_stride, cfg.window_every, cfg.window_every_min
    ),
}


@register_strategy("mix_grpo")
def mix_grpo(cfg, velocity, init_noise, sigmas, generator, iteration) -> Rollout:
    """MixGRPO (Li et al. 2025): SDE (Flow-GRPO's Eq. 9 in their code) inside the sliding window,
    Euler ODE outside, from one shared initial noise (their --init_same_noise); the window is trained.

    Flash variant: after the window the remaining n steps are compressed to the
    `mix_grpo_flash_tail_steps` DPM-Solver++(2M) steps of MixGRPO's re-interpolated grid
    (`compressed_tail`), the first of them second order from the last window step's data prediction.
    """
    g, num_steps, w = cfg.group_size, sigmas.numel() - 1, cfg.window_size
    shared = True if cfg.same_latent is None else cfg.same_latent
    x = _initial_noise(init_noise, g, shared, generator)
    start = WINDOW_STRATEGIES[cfg.window_strategy](cfg, iteration, num_steps)
    modes, grid = _window_modes(cfg, sigmas, start, w), sigmas
    if cfg.flash:
        after = start + w  # first step after the window
        n_post = mix_grpo_flash_tail_steps(num_steps, after, cfg.flash_compress_ratio)
        grid = torch.cat([sigmas[:after], compressed_tail(sigmas, after, n_post, cfg.shift)])
        modes = modes[:after] + ["dpm"] * n_post
    record = _all_rows(modes, range(start, start + w), g)
    recorder = _Recorder()
    final = _integrate(velocity, x, grid, modes, record, recorder, cfg, generator)
    return _trajectory_rollout("mix_grpo", cfg, velocity, recorder, final)


def mix_grpo_flash_tail_steps(num_steps: int, after: int, ratio: float) -> int:
    """MixGRPO-Flash: the n = num_steps - after steps left after the window become the steps between
    int(max((n + 1) * ratio, 1)) grid points (MixGRPO's sampling_utils.run_sample_step: the count is
    taken from the last SDE index, one before `after`), i.e. one step fewer than points. At least one
    step is kept so that the grid reaches sigma = 0 (with one point the reference's grid stops short of 0)."""
    points = int(max((num_steps - after + 1) * ratio, 1))
    return max(1, points - 1)


# ----------------------------------------------------------------------------- G2RPO


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


@register_strategy("g2rpo")
def g2rpo(cfg, velocity, init_noise, sigmas, generator, iteration) -> Rollout:
    """G2RPO (Granular GRPO, 2025): Singular Stochastic Sampling + Multi-Granularity Advantage Integration.

    One ODE anchor trajectory per prompt. For each k in M, G branches take ONE SDE step from the
    anchor's x_k (fresh noise each), then ODE to sigma = 0 on `granular_grid(sigmas, k, lambda)` for
    every lambda in Lambda. Image (k, lambda, b) is scored in reward group (k, lambda) and adds its
    advantage to sample (k, b); the trained transition of sample (k, b) is its branch step, whose
    input x_k is shared by the G branches (stored once).

    Batching: every row is a latent of the same prompt and sigma is per row, so call c evaluates the
    anchor at sigma_c, the G branch inputs if c is in M, and every running tail at its own sigma. A tail
    started at k takes ceil((T - k - 1) / lambda) <= T - k - 1 steps, so all of it fits in the anchor's
    T calls.
    """
    g, num_steps = cfg.group_size, sigmas.numel() - 1
    ks, lams = list(cfg.g2rpo_steps), list(cfg.g2rpo_granularities)
    anchor = _initial_noise(init_noise, 1, True, generator)
    recorder = _Recorder()
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
                noise_level=cfg.noise_level,
                kind=cfg.sde_kind,
                noise=_randn_like(x_k, generator),
                log_prob_form=cfg.log_prob_form,
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
        strategy="g2rpo",
        transitions=recorder.build(final),
        final_latents=final,
        reward_group=k_idx * len(lams) + l_idx,
        image_sample_id=k_idx * g + torch.arange(g).repeat(len(ids)),
        num_samples=len(ks) * g,
        sde_kind=cfg.sde_kind,
        noise_level=cfg.noise_level,
        nfe=velocity.nfe,
        velocity_calls=velocity.calls,
        image_info={"branch_step": torch.tensor(ks)[k_idx], "granularity": torch.tensor(lams)[l_idx]},
        anchor_latents=anchor,
        log_prob_form=cfg.log_prob_form,
    )


# ----------------------------------------------------------------------------- evaluation and NFE


def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic Euler ODE sampler (the evaluation sampler, T_eval steps): noise -> data."""
    sigmas = check_sigmas(sigmas, "sigmas", ends_at_zero=True)
    velocity, x = CountingVelocity(velocity_fn), noise.float()
    for i in range(sigmas.numel() - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        x = ode_step(velocity(x, s), x, s, s_next)
    return x


def eval_sample(
    velocity_fn: VelocityFn, init_noise: InitNoiseFn, sigmas: torch.Tensor, *, seeds: Sequence[int]
) -> torch.Tensor:
    """Evaluation images for one prompt: one Euler ODE sample per seed, image i starting from the noise
    of `seeds[i]` on a fresh CPU generator, so an image depends on its own seed only (not on how many
    images are sampled with it): evaluations of two checkpoints pair image by image."""
    if not seeds:
        raise ValueError("eval_sample needs at least one seed")
    noise = torch.cat([init_noise(1, torch.Generator().manual_seed(int(s))) for s in seeds])
    return euler_sample(velocity_fn, noise, sigmas)


def trajectory_nfe(num_steps: int, group_size: int) -> int:
    """NFE of G independent trajectories of T steps: T * G (flow_grpo, flow_grpo_fast, dance_grpo,
    mix_grpo without flash). One velocity call per step: T calls."""
    return num_steps * group_size


def mix_grpo_flash_nfe(
    num_steps: int, group_size: int, window_start: int, window_size: int, ratio: float
) -> int:
    """MixGRPO-Flash NFE: G * (l + w + `mix_grpo_flash_tail_steps`), one call per step."""
    after = window_start + window_size
    return group_size * (after + mix_grpo_flash_tail_steps(num_steps, after, ratio))


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


# The forward-process family (DiffusionNFT, AWM) registers its strategy in its own module.
import rollout.forward_process  # noqa: E402,F401
