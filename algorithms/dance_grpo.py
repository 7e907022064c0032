"""DanceGRPO (Xue et al. 2025, arXiv 2505.07818): the Dance SDE (constant diffusion eta) at every step
from one initial noise shared by the group; each sample trains its own random subset of steps."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.per_step import PerStepAlgorithm, check_trained_steps
from models.sampling import Recorder, initial_noise, integrate, sde_mode, trajectory_rollout


def dance_grpo_trained_steps(num_steps: int, fraction: float) -> int:
    """Steps trained per DanceGRPO sample: int((T - 1) * fraction), drawn from the first T - 1 steps."""
    return int((num_steps - 1) * fraction)


@register_algorithm
class DanceGRPO(PerStepAlgorithm):
    """DanceGRPO: the Dance SDE at every step from a shared initial noise, a random subset of steps trained.

    Each sample trains the first int((T - 1) * timestep_fraction) steps of its own random permutation of
    the first T - 1 steps, and the image is the last step's data prediction.

    As DanceGRPO's train_grpo_flux.py: the samples keep steps [:-1] (`samples["timesteps"][:, :-1]`),
    each is permuted with its own `randperm`, and `run_sample_step` returns `pred_original` of the last
    step, x0_hat = x_{T-1} - sigma_{T-1} v, for decoding, not the noisy SDE sample. So the last step only
    needs its velocity: no noise is drawn for it.
    """

    default_same_latent: ClassVar[bool] = True
    legacy_keys: ClassVar[dict[str, str]] = {
        **PerStepAlgorithm.legacy_keys, "sampling.timestep_fraction": "timestep_fraction",
    }

    name: Literal["dance_grpo"] = "dance_grpo"
    timestep_fraction: float = Field(
        1.0, gt=0.0, le=1.0,
        description="int((sampling.num_steps - 1) * fraction) steps drawn at random per sample from the first "
        "num_steps - 1 (DanceGRPO never trains the last step).",
    )

    def check(self, cfg) -> None:
        s = cfg.sampling
        check_trained_steps(self.name, s.num_steps - 1, self.timestep_fraction)
        if s.sde_kind != "dance":
            raise ValueError(
                f"sampling.sde_kind must be 'dance' for dance_grpo (got {s.sde_kind!r}); DanceGRPO's SDE has a "
                "constant diffusion eta = sampling.noise_level (0.3 in the paper)"
            )

    def sample(self, sampling, velocity, init_noise, sigmas, generator, iteration):
        g, num_steps = sampling.group_size, sigmas.numel() - 1
        x = initial_noise(init_noise, g, self.same_latent(sampling), generator)
        modes = [sde_mode(sampling.sde_kind, sigmas[i + 1].item()) for i in range(num_steps - 1)]
        n_train = dance_grpo_trained_steps(num_steps, self.timestep_fraction)
        record: dict[int, list[int]] = {}
        for b in range(g):
            for i in torch.randperm(num_steps - 1, generator=generator, device=generator.device)[:n_train].tolist():
                if modes[i] == "sde":
                    record.setdefault(i, []).append(b)
        recorder = Recorder()
        x = integrate(velocity, x, sigmas[:-1], modes, record, recorder, sampling, generator)
        s_last = sigmas[-2].item()
        final = x - s_last * velocity(x, s_last)
        return trajectory_rollout(self.name, sampling, velocity, recorder, final)
