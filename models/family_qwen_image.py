"""Qwen-Image (QwenImagePipeline) in the family table: what its pipeline does, in the project's time convention.

Checked against diffusers 0.42's pipelines/qwenimage/pipeline_qwenimage.py and
models/transformers/transformer_qwenimage.py, and against Flow-Factory's adapter
(X-GenGroup/Flow-Factory src/flow_factory/models/qwen_image/qwen_image.py), which trains it with GRPO:

- text: Qwen2.5-VL-7B's last hidden state of the prompt inside a fixed chat template, the template's first 34
  tokens dropped (`prompt_template_encode_start_idx`), padding tokens left out: every prompt has its own
  length. `encode_prompt` returns the embeddings with their mask; the mask travels in PromptEmbeds and a batch
  of rows is zero-padded to its longest (PromptEmbeds.cat), as the pipeline pads a batch. The transformer
  masks the padding in its joint attention (`encoder_hidden_states_mask`), and its text RoPE is indexed by
  position, so a row's velocity does not depend on what it is batched with (up to float rounding).
- latents: a 16-channel video VAE (AutoencoderKLQwenImage, one frame) normalised per channel with
  `latents_mean` / `latents_std` (no scaling/shift factor); the transformer sees 2x2-packed tokens of 64
  channels (the pipeline's _pack_latents); the velocity comes back unpacked [B, 16, h, w].
- time: timestep = sigma (the pipeline passes scheduler timesteps / 1000); the output is v = eps - x0.
- schedule: t = linspace(1, 1/T, T) shifted with mu from the image token count (base_shift 0.5 at 256 tokens,
  max_shift 0.9 at 8192, exponential) and stretched so the last sigma is shift_terminal 0.02: the scheduler
  config's values, sampling.shift_mode=resolution (models/schedule.py resolution_sigmas).
- CFG: `true_cfg_scale` (the model has no guidance embedding): comb = v_u + w (v_c - v_u), then rescaled to the
  conditional prediction's norm per token: v = comb ||v_c|| / ||comb||, the norm over a token's 64 packed
  channels (pipeline_qwenimage.py; Flow-Factory's forward does the same).
"""

from __future__ import annotations

import torch

from models.families import ModelFamily, register_family
from models.types import PromptEmbeds

# Qwen2.5-VL's context, which QwenImagePipeline caps prompts at (tokenizer_max_length = 1024).
MAX_TEXT_TOKENS = 1024


@register_family("qwen_image")
class QwenImageFamily(ModelFamily):
    """Qwen-Image: one Qwen2.5-VL text encoder (variable-length masked embeddings), packed 2x2 latents of a
    per-channel-normalised video VAE, timestep = sigma, true CFG with a norm-preserving rescale."""

    pipeline_class = "QwenImagePipeline"
    required_components = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
    uses_cfg = True
    clip_tokens = 0
    latent_patch = 2
    # AutoencoderKLQwenImage's causal 3-D convolutions and their frame caches: 11.3-12.8 elements per pixel per
    # full-resolution channel (192) measured on CPU in bf16 (4 images at 256 px, 2 at 512), 3x AutoencoderKL's 4.
    decode_elements_per_pixel_channel = 12.0
    # A training forward/backward keeps ~70 elements per token per hidden unit per block (20 for SD3.5's MMDiT):
    # +0.118 GB per row of 272 tokens at 3072 on one bf16 block, measured on CPU at 2, 4 and 8 rows
    # (benchmarks/memory_plan.py, docs/benchmarks.md); fp32 RoPE and norms and the MLPs' adapted 4h projections.
    train_elements_per_token_hidden = 70.0

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        if cfg.resolution % (self.vae_scale * 2):
            raise ValueError(f"model.resolution={cfg.resolution} must be a multiple of {self.vae_scale * 2} for Qwen-Image")
        if not 0 < cfg.max_sequence_length <= MAX_TEXT_TOKENS:
            raise ValueError(
                f"model.max_sequence_length={cfg.max_sequence_length}: Qwen-Image keeps at most this many prompt tokens "
                f"(after its chat template); set 1..{MAX_TEXT_TOKENS} (QwenImagePipeline's default is 512)"
            )

    # ---- class-level (configs only)

    @classmethod
    def vae_scale_of(cls, vae_config: dict) -> int:
        """One spatial halving per down stage, which `temperal_downsample` lists (QwenImagePipeline's rule)."""
        return 2 ** len(vae_config["temperal_downsample"])

    @classmethod
    def architecture(cls, transformer_config: dict, vae_config: dict) -> dict:
        t, v, scale = transformer_config, vae_config, cls.vae_scale_of(vae_config)
        return {"hidden": t["num_attention_heads"] * t["attention_head_dim"], "layers": t["num_layers"],
                "pixels_per_token": cls.pixels_per_token(scale, 2), "vae_fullres_channels": v["base_dim"] * max(v["dim_mult"][:2]),
                "latent_channels": v["z_dim"], "vae_scale": scale, "embed_dim": t["joint_attention_dim"], "pooled_dim": 0}

    # ---- the loaded model

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        embeds, mask = self.pipe.encode_prompt(
            prompt=list(prompts), device=self.pipe.transformer.device, max_sequence_length=self.cfg.max_sequence_length
        )
        # encode_prompt drops the mask when no row is padded; the project always carries one.
        mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device) if mask is None else mask.bool()
        return PromptEmbeds(embeds, embeds.new_zeros(embeds.shape[0], 0), mask=mask)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        side = 2 * (self.cfg.resolution // (self.vae_scale * 2))
        return (batch, self.pipe.transformer.config.in_channels // 4, side, side)

    def image_seq_len(self) -> int:
        return (self.cfg.resolution // (self.vae_scale * 2)) ** 2  # packed 2x2 latent tokens

    def forward(self, transformer, x, sigma, cond: PromptEmbeds, guidance: float) -> torch.Tensor:
        b, c, h, w = x.shape
        out = transformer(
            hidden_states=self.pipe._pack_latents(x, b, c, h, w),
            timestep=sigma,
            encoder_hidden_states=cond.embeds,
            encoder_hidden_states_mask=cond.mask,
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
        # _unpack_latents gives the VAE's [B, C, 1 frame, h, w]
        return self.pipe._unpack_latents(out, h * self.vae_scale, w * self.vae_scale, self.vae_scale)[:, :, 0]

    def blank_conditioning(self) -> PromptEmbeds:
        zero = PromptEmbeds(torch.zeros(1, 1, self.pipe.transformer.config.joint_attention_dim), torch.zeros(1, 0),
                            mask=torch.ones(1, 1, dtype=torch.bool))
        return PromptEmbeds(zero.embeds, zero.pooled, zero, zero.mask)

    def guide(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, w: float) -> torch.Tensor:
        """QwenImagePipeline's true CFG: the linear combination rescaled, token by token, to the conditional
        prediction's norm (over the token's C x 2 x 2 packed channels). The pipeline guides only when
        true_cfg_scale > 1; w = 1 never gets here (Policy.velocity runs no unconditional half)."""
        comb = v_uncond + w * (v_cond - v_uncond)
        b, c, h, wd = comb.shape

        def token_norm(v: torch.Tensor) -> torch.Tensor:
            return v.reshape(b, c, h // 2, 2, wd // 2, 2).square().sum((1, 3, 5), keepdim=True).sqrt()

        scale = token_norm(v_cond) / token_norm(comb)
        return (comb.reshape(b, c, h // 2, 2, wd // 2, 2) * scale).reshape(b, c, h, wd)

    def decode(self, vae, z: torch.Tensor) -> torch.Tensor:
        """QwenImagePipeline's decode: per-channel mean and std undone on one frame."""
        cfg = vae.config
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=vae.dtype).view(1, cfg.z_dim, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(cfg.latents_std, device=z.device, dtype=vae.dtype).view(1, cfg.z_dim, 1, 1, 1)
        return vae.decode(z.to(vae.dtype).unsqueeze(2) / inv_std + mean, return_dict=False)[0][:, :, 0]
