"""Wan2.1 / Wan2.2 text-to-video (WanPipeline) in the family table: what its pipeline does, in the project's time
convention, with frames.

Checked against diffusers 0.42's pipelines/wan/pipeline_wan.py, models/transformers/transformer_wan.py and
models/autoencoders/autoencoder_kl_wan.py, and against the DanceGRPO-derived Wan trainer of Pref-GRPO
(CodeGoat24/Pref-GRPO fastvideo/train_wan_2_1*.py: GRPO on Wan2.1-T2V with DanceGRPO's SDE):

- latents: [B, 16, F_lat, H/8, W/8] with F_lat = (num_frames - 1) / 4 + 1 (AutoencoderKLWan compresses 4 frames into
  one latent frame after the first: `model.num_frames` must be 4k + 1, as the pipeline rounds to). The transformer
  patches (1, 2, 2) itself and takes and returns the 5-D latents: no packing outside. Every strategy, the data plane,
  the learner and the checkpoints see these 5-D latents as they see 4-D image latents (they reduce over every
  non-batch dimension).
- text: UMT5-XXL's last hidden state of the prompt's tokens, then zero-padded to max_sequence_length (512 in the
  pipeline) and fed whole, zeros included: no mask (the padding is part of what the model was trained on, as SD3's T5
  padding is).
- time: timestep = sigma * 1000 (the pipeline passes the scheduler's timesteps); the output is the flow velocity
  v = eps - x0 (UniPC's flow_prediction: x0 = x - sigma v).
- schedule: the published scheduler is UniPCMultistepScheduler with flow sigmas, shift(linspace(1, 1/1000, T + 1)[:-1])
  with flow_shift 3.0 (480p; 5.0 at 720p), then 0: within 2.5e-3 of the linear-shift grid at T = 20, which the RL
  trainers build by hand and step with their own Euler SDE (sampling.sigma_schedule=linear with sampling.shift), as the
  strategies here do; UniPC's multistep corrector is not reproduced.
- CFG: WanPipeline's `guidance_scale` g > 1 runs the negative prompt's half: v = v_u + g (v_c - v_u) (the default
  combination). Pref-GRPO's Wan runs sample and train with cfg_infer 5.0.
- decode: AutoencoderKLWan after undoing the per-channel latents_mean / latents_std: [B, 3, F, H, W] frames.
- Wan2.2 A14B's second low-noise transformer (`transformer_2`, boundary_ratio) is not supported: one transformer is
  trained. Wan2.2 TI2V-5B (expand_timesteps, a 16x VAE) is not checked either.
"""

from __future__ import annotations

import torch

from models.families import ModelFamily, register_family
from models.types import PromptEmbeds


def wan_linears(dim: int, ffn: int, layers: int, text_dim: int = 4096, freq_dim: int = 256,
                out_channels: int = 16) -> tuple[tuple[str, int, int], ...]:
    """(module, in, out) of every 2-D weight of a WanTransformer3DModel with patch (1, 2, 2) (the planner's exact LoRA
    and FLOP counts for a published model named by hub id; tests/test_family_wan.py checks it against diffusers)."""
    head = [("condition_embedder.time_embedder.linear_1", freq_dim, dim), ("condition_embedder.time_embedder.linear_2", dim, dim),
            ("condition_embedder.time_proj", dim, 6 * dim), ("condition_embedder.text_embedder.linear_1", text_dim, dim),
            ("condition_embedder.text_embedder.linear_2", dim, dim)]  # fmt: skip
    block = [*((f"attn{a}.{m}", dim, dim) for a in (1, 2) for m in ("to_q", "to_k", "to_v", "to_out.0")),
             ("ffn.net.0.proj", dim, ffn), ("ffn.net.2", ffn, dim)]
    body = [(f"blocks.{i}.{name}", fan_in, fan_out) for i in range(layers) for name, fan_in, fan_out in block]
    return tuple(head + body + [("proj_out", dim, out_channels * 4)])


@register_family("wan")
class WanFamily(ModelFamily):
    """Wan2.1 T2V: UMT5 embeddings padded to a fixed length, 5-D video latents patched by the transformer,
    timestep = sigma * 1000, plain CFG with the negative prompt, AutoencoderKLWan's per-channel normalisation."""

    pipeline_class = "WanPipeline"
    required_components = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
    t5_component = "text_encoder"  # UMT5: model.max_sequence_length is its padded length
    uses_cfg = True
    clip_tokens = 0
    latent_patch = 2  # patch (1, 2, 2): 16 pixels per token side
    temporal_compression = 4  # frames per latent frame after the first (AutoencoderKLWan's scale_factor_temporal)
    # Decoding a video runs latent frame by latent frame (its causal convolutions cache the last 2 frames), each step
    # producing 4 frames at full resolution, so the peak does not grow with the frame count (but for the decoded frames,
    # 3 channels). Measured in bf16 with 2 videos per decode (benchmarks/memory_plan.py, docs/benchmarks.md): 39 elements
    # per pixel of one frame per full-resolution channel at 256 px (9 frames), 34 at 384 px (5 frames); 36 puts both
    # rollouts' peaks within 6%. The estimate before, 52 (4 frames x Qwen-Image's one-frame 12.8, the same VAE
    # architecture), put them at 1.23x and 1.44x the measured.
    decode_elements_per_pixel_channel = 36.0
    # A checkpointed block's training forward/backward, fitted to four learner runs (2, 4 and 8 rows of 784 tokens, 4 of
    # 1168; benchmarks/memory_plan.py): 110 puts their peaks at 0.88-1.12x the measured, where SD3.5's 20 put them at
    # 0.30-0.43x. Wan's blocks run their norms, modulation and residual adds in fp32 (transformer_wan.py `.float()`), so
    # they keep more per element than a bf16 block; and the learner's growth is not linear in the rows (0.28 GB per row of
    # 784 tokens from 2 to 4 rows, 0.17 GB from 4 to 8), so no one factor fits them closer.
    train_elements_per_token_hidden = 110.0

    def __init__(self, pipe, cfg):
        self.pipe, self.cfg = pipe, cfg
        # WanPipeline names its scales vae_scale_factor_spatial / _temporal; a transformer-only load (learner ranks)
        # has no VAE and gets vae_scale_factor from the folder's vae/config.json (models/policy.py load_pipeline).
        self.vae_scale = getattr(pipe, "vae_scale_factor", None) or pipe.vae_scale_factor_spatial
        if pipe.vae_scale_factor_temporal != self.temporal_compression:
            raise ValueError(f"{cfg.path}: its VAE compresses {pipe.vae_scale_factor_temporal} frames per latent frame; "
                             f"the wan family knows Wan2.1's {self.temporal_compression}")
        multiple = self.vae_scale * 2
        if cfg.resolution % multiple:
            raise ValueError(f"model.resolution={cfg.resolution} must be a multiple of {multiple} for Wan (VAE scale x patch 2)")
        if cfg.max_sequence_length <= 0:
            raise ValueError("model.max_sequence_length must be > 0 for Wan: the UMT5 length prompts are padded to "
                             "(WanPipeline's default is 512)")
        if getattr(pipe, "transformer_2", None) is not None:
            raise ValueError(f"{cfg.path} is a two-transformer Wan2.2 (transformer_2, boundary_ratio): only "
                             "single-transformer Wan models are supported")

    # ---- class-level (configs only)

    @classmethod
    def vae_scale_of(cls, vae_config: dict) -> int:
        """AutoencoderKLWan's scale_factor_spatial (WanPipeline reads it); older configs without it: one halving per
        down stage."""
        return vae_config.get("scale_factor_spatial") or 2 ** len(vae_config["temperal_downsample"])

    @classmethod
    def architecture(cls, transformer_config: dict, vae_config: dict) -> dict:
        t, v, scale = transformer_config, vae_config, cls.vae_scale_of(vae_config)
        return {"hidden": t["num_attention_heads"] * t["attention_head_dim"], "layers": t["num_layers"],
                "pixels_per_token": cls.pixels_per_token(scale, t["patch_size"][1]),
                "vae_fullres_channels": v["base_dim"] * max(v["dim_mult"][:2]), "latent_channels": v["z_dim"],
                "vae_scale": scale, "embed_dim": t["text_dim"], "pooled_dim": 0}

    # ---- the loaded model

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        embeds, _ = self.pipe.encode_prompt(prompt=list(prompts), do_classifier_free_guidance=False,
                                            max_sequence_length=self.cfg.max_sequence_length,
                                            device=self.pipe.transformer.device)
        return PromptEmbeds(embeds, embeds.new_zeros(embeds.shape[0], 0))

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        side = self.cfg.resolution // self.vae_scale
        return (batch, self.pipe.transformer.config.in_channels, self.latent_frames(self.cfg.num_frames), side, side)

    def image_seq_len(self) -> int:
        return self.latent_frames(self.cfg.num_frames) * (self.cfg.resolution // (self.vae_scale * 2)) ** 2

    def forward(self, transformer, x, sigma, cond: PromptEmbeds, guidance: float) -> torch.Tensor:
        return transformer(hidden_states=x, timestep=sigma * 1000.0, encoder_hidden_states=cond.embeds,
                           return_dict=False)[0]

    def blank_conditioning(self) -> PromptEmbeds:
        zero = PromptEmbeds(torch.zeros(1, 1, self.pipe.transformer.config.text_dim), torch.zeros(1, 0))
        return PromptEmbeds(zero.embeds, zero.pooled, zero)

    def decode(self, vae, z: torch.Tensor) -> torch.Tensor:
        """WanPipeline's output path: latents_mean / latents_std undone per channel, then the video VAE:
        [B, 3, F, H, W] in [-1, 1]."""
        c = vae.config
        mean = torch.tensor(c.latents_mean, device=z.device, dtype=vae.dtype).view(1, c.z_dim, 1, 1, 1)
        std = torch.tensor(c.latents_std, device=z.device, dtype=vae.dtype).view(1, c.z_dim, 1, 1, 1)
        return vae.decode(z.to(vae.dtype) * std + mean, return_dict=False)[0]
