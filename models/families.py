"""The model family table: one entry per diffusers pipeline family, chosen by `model.family`.

An entry is everything that differs between families, and nothing outside this table tests a family's
name (diffusers' AutoPipeline mappings are the model: a new model is one row):
- loading: the pipeline class, the components a folder must hold, which component is the T5 encoder;
- conditioning: how prompts become embeddings, whether CFG is a second half of the batch;
- the transformer call in the project's time convention (sigma in [0, 1], v = eps - x0), with the
  family's latent packing hidden inside, so strategies and losses stay model-agnostic;
- planner terms (cluster/memory_plan.py): rows per sample of a transformer call, prompt-embedding rows
  shipped with a group, pixels per image token, CLIP tokens.

Adding a family: subclass `ModelFamily` below with `@register_family("name")`, fill in its attributes and
its four methods, then a preset with `model.family: name` (docs/architecture.md, "Adding a model family").
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.types import PromptEmbeds

FAMILIES: dict[str, type[ModelFamily]] = {}


def register_family(name: str) -> Callable[[type[ModelFamily]], type[ModelFamily]]:
    def wrap(cls: type[ModelFamily]) -> type[ModelFamily]:
        if name in FAMILIES:
            raise ValueError(f"model family {name!r} is already registered")
        cls.name = name
        FAMILIES[name] = cls
        return cls

    return wrap


def family_of(name: str) -> type[ModelFamily]:
    """The registered family `name` (model.family), or an error naming the registered ones."""
    if name not in FAMILIES:
        raise ValueError(f"model.family {name!r} is not registered; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


class ModelFamily:
    """One pipeline family. Class attributes are read before any weights load (config checks, the planner);
    an instance wraps a loaded pipeline and its `model` config section (models/config.py ModelConfig)."""

    name: str = ""
    pipeline_class: str = ""  # the diffusers pipeline class name (model_index.json `_class_name`)
    # Components a pipeline folder must hold (optional ones, such as SD3's T5, are not listed).
    required_components: tuple[str, ...] = ()
    t5_component: str = ""  # the pipeline attribute holding the T5 encoder (model.max_sequence_length)
    uses_cfg: bool = False  # true CFG: a second, unconditional half of every transformer batch
    clip_tokens: int = 0  # CLIP tokens in the transformer's text sequence (planner)
    latent_patch: int | None = None  # latent pixels per token side; None: the transformer's patch_size
    # Live elements per output pixel per full-resolution channel of one VAE decode (planner); None: the
    # AutoencoderKL factor measured for SD3.5 and FLUX.1 (cluster/memory_plan.py).
    decode_elements_per_pixel_channel: float | None = None
    # Elements per token per hidden unit per block of a training forward/backward and of one inference block
    # (planner); None: the factors measured for SD3.5 and FLUX.1 (cluster/memory_plan.py).
    train_elements_per_token_hidden: float | None = None
    inference_elements_per_token_hidden: float | None = None
    # Video families: frames per latent frame after the first (a 4k + 1 frame video has k + 1 latent frames); 0: the
    # family makes images (model.num_frames is 1).
    temporal_compression: int = 0

    def __init__(self, pipe, cfg):
        self.pipe, self.cfg = pipe, cfg
        self.vae_scale = pipe.vae_scale_factor

    # ---- planner terms (class-level: no weights needed)

    @classmethod
    def rows_per_sample(cls, guidance_scale: float) -> int:
        """Rows of a transformer call per latent: true CFG doubles the batch unless guidance is 1."""
        return 2 if cls.uses_cfg and guidance_scale != 1.0 else 1

    @classmethod
    def shipped_embedding_rows(cls) -> int:
        """Prompt-embedding rows a group's payload carries: the prompt's, and the negative prompt's under CFG."""
        return 2 if cls.uses_cfg else 1

    @classmethod
    def pixels_per_token(cls, vae_scale: int, patch_size: int) -> int:
        return vae_scale * (cls.latent_patch or patch_size)

    @classmethod
    def check_frames(cls, num_frames: int) -> None:
        """ValueError unless `num_frames` (model.num_frames) is what this family makes: 1 for an image family, 4k + 1
        for a video family whose VAE compresses 4 frames (the pipelines round other counts; here they are refused)."""
        k = cls.temporal_compression
        if not k and num_frames != 1:
            raise ValueError(f"model.num_frames={num_frames}: model.family {cls.name!r} makes images; set it to 1")
        if k and (num_frames - 1) % k:
            raise ValueError(f"model.num_frames={num_frames}: {cls.name!r} videos have {k}k + 1 frames (its VAE "
                             f"compresses {k} frames into one latent frame after the first); use e.g. "
                             f"{(num_frames - 1) // k * k + 1} or {(num_frames - 1) // k * k + k + 1}")

    @classmethod
    def latent_frames(cls, num_frames: int) -> int:
        """Latent frames of a sample of `num_frames` frames (planner: tokens and latent bytes scale with it)."""
        return (num_frames - 1) // cls.temporal_compression + 1 if cls.temporal_compression else 1

    # ---- the loaded model

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        raise NotImplementedError

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        raise NotImplementedError

    def image_seq_len(self) -> int:
        raise NotImplementedError

    def forward(self, transformer, x, sigma, cond: PromptEmbeds, guidance: float) -> torch.Tensor:
        raise NotImplementedError

    # ---- hooks with the SD3 / FLUX.1 behaviour as default (a family overrides what its pipeline does otherwise)

    @classmethod
    def vae_scale_of(cls, vae_config: dict) -> int:
        """Pixels per latent side, from the VAE's config.json alone (a transformer-only load has no VAE)."""
        return 2 ** (len(vae_config["block_out_channels"]) - 1)

    @classmethod
    def architecture(cls, transformer_config: dict, vae_config: dict) -> dict:
        """What the memory planner reads of the transformer's and the VAE's config.json
        (cluster/model_specs.py pipeline_spec): PipelineSpec's fields by name."""
        t, blocks, scale = transformer_config, vae_config["block_out_channels"], cls.vae_scale_of(vae_config)
        return {"hidden": t["num_attention_heads"] * t["attention_head_dim"],
                "layers": t["num_layers"] + t.get("num_single_layers", 0),
                "pixels_per_token": cls.pixels_per_token(scale, t.get("patch_size", 1)),
                "vae_fullres_channels": max(blocks[:2]), "latent_channels": vae_config["latent_channels"],
                "vae_scale": scale, "embed_dim": t["joint_attention_dim"], "pooled_dim": t.get("pooled_projection_dim", 0)}

    @classmethod
    def resolution_sigmas(cls, num_steps: int, image_seq_len: int, scheduler_config: dict) -> torch.Tensor:
        """The pipeline's own resolution-dependent grid (sampling.shift_mode=resolution): mu from the scheduler
        config (FluxPipeline's, QwenImagePipeline's: models/schedule.py `resolution_sigmas`)."""
        from models.schedule import resolution_sigmas

        return resolution_sigmas(num_steps, image_seq_len, scheduler_config)

    @classmethod
    def step_distilled(cls, path: str) -> str | None:
        """Why the model at `path` (model.path) is step-distilled, or None: a distilled model's few steps are no
        diffusion SDE's, so the per-step algorithms have no per-step policy to train (cluster/config.py refuses
        them unless model.allow_step_distilled)."""
        return None

    def blank_conditioning(self) -> PromptEmbeds:
        """Zero conditioning of one text token, with a zero negative: what a zero-weight padding batch of a
        learner rank without groups runs on (it only has to run the transformer; no encoder needed)."""
        c = self.pipe.transformer.config
        zero = PromptEmbeds(torch.zeros(1, 1, c.joint_attention_dim), torch.zeros(1, c.pooled_projection_dim))
        return PromptEmbeds(zero.embeds, zero.pooled, zero)

    def guide(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, w: float) -> torch.Tensor:
        """CFG's combination of the two halves (float32 [B, C, h, w])."""
        return v_uncond + w * (v_cond - v_uncond)

    def decode(self, vae, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] -> images [B, 3, H, W] in [-1, 1]: AutoencoderKL's scaling and shift undone."""
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(z.to(vae.dtype) / vae.config.scaling_factor + shift, return_dict=False)[0]


_CLIP_PAIR_AND_T5 = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


@register_family("sd3")
class SD3Family(ModelFamily):
    """SD3 / SD3.5: timestep = sigma * 1000, CLIP-L + CLIP-G (+ T5) embeddings, true CFG."""

    pipeline_class = "StableDiffusion3Pipeline"
    # text_encoder_3/tokenizer_3 (T5) are optional for SD3 (model_index.json may list them as null).
    required_components = _CLIP_PAIR_AND_T5
    t5_component = "text_encoder_3"
    uses_cfg = True
    clip_tokens = 77

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        multiple = self.vae_scale * pipe.transformer.config.patch_size
        if cfg.resolution % multiple:
            raise ValueError(f"model.resolution={cfg.resolution} must be a multiple of {multiple} (VAE scale x patch size)")

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.pipe.transformer.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.cfg.max_sequence_length,
        )
        return PromptEmbeds(embeds, pooled)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        side = self.cfg.resolution // self.vae_scale
        return (batch, self.pipe.transformer.config.in_channels, side, side)

    def image_seq_len(self) -> int:
        return (self.cfg.resolution // (self.vae_scale * self.pipe.transformer.config.patch_size)) ** 2

    def forward(self, transformer, x, sigma, cond: PromptEmbeds, guidance: float) -> torch.Tensor:
        return transformer(
            hidden_states=x,
            timestep=sigma * 1000.0,
            encoder_hidden_states=cond.embeds,
            pooled_projections=cond.pooled,
            return_dict=False,
        )[0]


@register_family("flux")
class FluxFamily(ModelFamily):
    """FLUX.1: timestep = sigma, packed 2x2 latents with position ids, guidance as an embedding.

    FLUX.1-dev is guidance-distilled: `model.guidance_scale` feeds its guidance embedding and no
    unconditional pass runs (FLUX.1-schnell has no guidance embedding and ignores it).
    """

    pipeline_class = "FluxPipeline"
    required_components = _CLIP_PAIR_AND_T5
    t5_component = "text_encoder_2"
    uses_cfg = False
    clip_tokens = 0
    latent_patch = 2

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        if cfg.resolution % (self.vae_scale * 2):
            raise ValueError(f"model.resolution={cfg.resolution} must be a multiple of {self.vae_scale * 2} for FLUX")

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.pipe.transformer.device,
            max_sequence_length=self.cfg.max_sequence_length,
        )
        return PromptEmbeds(embeds, pooled)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        side = 2 * (self.cfg.resolution // (self.vae_scale * 2))
        return (batch, self.pipe.transformer.config.in_channels // 4, side, side)

    def image_seq_len(self) -> int:
        return (self.cfg.resolution // (self.vae_scale * 2)) ** 2  # packed 2x2 latent tokens

    def forward(self, transformer, x, sigma, cond: PromptEmbeds, guidance: float) -> torch.Tensor:
        b, c, h, w = x.shape
        packed = self.pipe._pack_latents(x, b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        guidance_embed = None
        if transformer.config.guidance_embeds:
            guidance_embed = torch.full((b,), guidance, device=x.device, dtype=torch.float32)
        out = transformer(
            hidden_states=packed,
            timestep=sigma,
            guidance=guidance_embed,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.embeds,
            txt_ids=x.new_zeros(cond.embeds.shape[1], 3),  # FluxPipeline.encode_prompt's text_ids: zeros [L, 3]
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return self.pipe._unpack_latents(out, h * self.vae_scale, w * self.vae_scale, self.vae_scale)


# Families in their own modules, registered on import.
import models.family_flux2  # noqa: E402, F401
import models.family_qwen_image  # noqa: E402, F401
import models.family_wan  # noqa: E402, F401
import models.family_z_image  # noqa: E402, F401
