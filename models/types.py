"""The rollout record: what a sampling strategy hands to the reward models and the learner.

One record per prompt group. Ids are local to the group (0-based); the rollout worker offsets them
when it concatenates groups.

- `transitions`: the trained steps only. The learner recomputes each log-prob with
  `sde_step(v(x_t, sigma), x_t, sigma, sigma_next, noise_level=..., kind=..., prev_sample=x_next)`.
  Transitions with the same `input_id` share x_t bit-for-bit (G2RPO's G branches at step k), which
  is stored once in `inputs`, so the learner can run one forward per distinct input.
- `final_latents`: the latents to decode and score. `reward_group` says which images are normalised
  together; `image_sample_id` says which trained sample the image's advantage adds to (G2RPO:
  image (k, lambda, b) -> sample (k, b), so a sample's advantage sums over lambda).
- `conditioning`: the prompt's text embeddings (and the negative prompt's, for CFG), attached by the
  rollout worker: learner ranks load no text encoder and train with these (common/data_plane.py).
- `nfe`: single-latent evaluations of the guided velocity (CFG counted once); `velocity_calls`:
  batched calls of the velocity function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class PromptEmbeds:
    """Text conditioning of a batch: one row per sample (SD3: CLIP+T5 tokens; FLUX: T5 tokens).

    `negative`: the same rows' unconditional embeddings (model.negative_prompt) for CFG when they travel
    with the conditioning (a learner rank has no text encoder to make them); None: the policy encodes
    model.negative_prompt itself.

    `mask`: [B, L] bool, True for a real token, for families whose prompts have their own lengths (Qwen-Image,
    Z-Image: the LLM encoder's hidden states of the prompt's tokens only); None: every token is real (SD3's
    and FLUX's fixed-length T5 padding is part of what the model was trained on). Rows of different lengths
    are padded with zero tokens that the mask leaves out (`cat`), as QwenImagePipeline pads a batch."""

    embeds: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor  # [B, P] (P = 0 for families without a pooled embedding)
    negative: PromptEmbeds | None = None
    mask: torch.Tensor | None = None  # [B, L] bool

    @staticmethod
    def cat(parts: Sequence[PromptEmbeds]) -> PromptEmbeds:
        negatives = [p.negative for p in parts]
        negative = PromptEmbeds.cat(negatives) if negatives and None not in negatives else None
        if all(p.mask is None for p in parts) and len({p.embeds.shape[1] for p in parts}) == 1:
            return PromptEmbeds(torch.cat([p.embeds for p in parts]), torch.cat([p.pooled for p in parts]), negative)
        length = max(p.embeds.shape[1] for p in parts)
        embeds = torch.cat([torch.nn.functional.pad(p.embeds, (0, 0, 0, length - p.embeds.shape[1])) for p in parts])
        masks = [p.mask if p.mask is not None else p.embeds.new_ones(p.embeds.shape[:2], dtype=torch.bool) for p in parts]
        mask = torch.cat([torch.nn.functional.pad(m, (0, length - m.shape[1])) for m in masks])
        return PromptEmbeds(embeds, torch.cat([p.pooled for p in parts]), negative, mask)

    def expand(self, batch: int) -> PromptEmbeds:
        negative = self.negative.expand(batch) if self.negative is not None else None
        mask = self.mask.expand(batch, -1) if self.mask is not None else None
        return PromptEmbeds(self.embeds.expand(batch, -1, -1), self.pooled.expand(batch, -1), negative, mask)

    def rows(self, start: int, stop: int) -> PromptEmbeds:
        """Rows start:stop (the negative left behind: it is for the whole batch)."""
        mask = self.mask[start:stop] if self.mask is not None else None
        return PromptEmbeds(self.embeds[start:stop], self.pooled[start:stop], None, mask)

    def trimmed(self, row: int) -> PromptEmbeds:
        """Row `row` alone, without the padding a batch gave it: a prompt's entry is then the same whatever it
        was encoded beside (the policy's prompt cache, the shipped conditioning)."""
        one = self.rows(row, row + 1)
        if one.mask is None:
            return one
        length = int(one.mask[0].nonzero().max().item()) + 1 if one.mask.any() else 0
        return PromptEmbeds(one.embeds[:, :length], one.pooled, None, one.mask[:, :length])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PromptEmbeds:
        """Embeddings on `device` in `dtype` (the mask keeps its bool dtype; the negative is left behind)."""
        mask = self.mask.to(device) if self.mask is not None else None
        return PromptEmbeds(self.embeds.to(device, dtype), self.pooled.to(device, dtype), None, mask)


@dataclass
class Transitions:
    """K recorded SDE steps over U distinct inputs."""

    inputs: torch.Tensor  # [U, ...] distinct x_t, each stored once
    input_id: torch.Tensor  # [K] long, row of `inputs` that is this transition's x_t
    next_latents: torch.Tensor  # [K, ...] x_next as sampled
    sigma: torch.Tensor  # [K] float32
    sigma_next: torch.Tensor  # [K] float32
    log_prob: torch.Tensor  # [K] float32, log-prob of x_next at sampling time
    sample_id: torch.Tensor  # [K] long, the trained sample the transition belongs to
    step: torch.Tensor  # [K] long, index of the step in the sampling schedule (for per-step diagnostics)
    # [K, ...] the sampler's Gaussian mean of x_next, kept only for units whose loss compares the old and new
    # policies' means (Flow-DPPO's KL mask, GRPO-Guard's ratio normalisation: `records_step_means`)
    mean: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_id.shape[0]

    @property
    def latents(self) -> torch.Tensor:
        """x_t per transition, [K, ...] (a gather: use `inputs` and `input_id` to avoid the copy)."""
        return self.inputs[self.input_id]


@dataclass
class Rollout:
    """Everything one prompt group's sampling produced."""

    strategy: str  # the algorithm that sampled it (algorithm.name): for logs and records only
    transitions: Transitions
    final_latents: torch.Tensor  # [I, ...]
    reward_group: torch.Tensor  # [I] long: images normalised together
    image_sample_id: torch.Tensor  # [I] long: the sample whose advantage the image adds to
    num_samples: int  # trained samples; sample ids lie in [0, num_samples)
    sde_kind: str  # the step the learner must use to recompute log-probs
    noise_level: float
    nfe: int
    velocity_calls: int
    image_info: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # per-image tags, e.g. g2rpo's k, lambda
    anchor_latents: torch.Tensor | None = None  # G2RPO's ODE anchor image: logged, never trained on
    log_prob_form: str = "gaussian"  # models/sde.py LOG_PROB_FORMS: the learner recomputes with the same form
    conditioning: PromptEmbeds | None = None  # [1, L, D] the prompt's (with the negative's, CFG): the learner's text input
    # The learner trains on `final_latents` (the forward-process family), so the data plane ships them.
    learner_needs_final: bool = False

    @property
    def num_reward_groups(self) -> int:
        return int(self.reward_group.max().item()) + 1 if self.reward_group.numel() else 0

    def validate(self) -> Rollout:
        """Check the record's shapes and id ranges; returns self."""
        t, k, i = self.transitions, len(self.transitions), self.final_latents.shape[0]
        per_transition = {
            "next_latents": t.next_latents.shape[0],
            "sigma": t.sigma.shape[0],
            "sigma_next": t.sigma_next.shape[0],
            "log_prob": t.log_prob.shape[0],
            "sample_id": t.sample_id.shape[0],
            "step": t.step.shape[0],
        }
        for name, n in per_transition.items():
            if n != k:
                raise ValueError(f"transitions.{name} has {n} rows for {k} transitions")
        if k and (t.input_id.min() < 0 or t.input_id.max() >= t.inputs.shape[0]):
            raise ValueError("transitions.input_id out of range of transitions.inputs")
        if (
            t.inputs.shape[1:] != t.next_latents.shape[1:]
            or t.inputs.shape[1:] != self.final_latents.shape[1:]
        ):
            raise ValueError("transitions.inputs, next_latents and final_latents must share the latent shape")
        if t.log_prob.dtype != torch.float32:
            raise ValueError(f"transitions.log_prob must be float32, got {t.log_prob.dtype}")
        if not torch.all(t.sigma_next < t.sigma):
            raise ValueError("transitions must step from sigma to a smaller sigma_next")
        for name, ids in (("transitions.sample_id", t.sample_id), ("image_sample_id", self.image_sample_id)):
            if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_samples):
                raise ValueError(f"{name} must lie in [0, num_samples={self.num_samples})")
        if self.reward_group.shape[0] != i or self.image_sample_id.shape[0] != i:
            raise ValueError("reward_group and image_sample_id need one entry per final latent")
        if any(v.shape[0] != i for v in self.image_info.values()):
            raise ValueError("image_info tensors need one entry per final latent")
        return self
