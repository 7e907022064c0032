"""What the memory planner (cluster/memory_plan.py) knows of a model: its architecture, read from a
diffusers pipeline folder (config.json files and safetensors headers, no weights loaded) or, for a dry run
without the weights, from a table of the published architectures the presets name; and a scorer's size.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from models.families import family_of
from models.family_wan import wan_linears

# ----------------------------------------------------------------------------- model architecture


@dataclass(frozen=True)
class PipelineSpec:
    """What the planner needs of a diffusers pipeline; read by `pipeline_spec` (configs, safetensors headers)."""

    family: str  # model.family (models/families.py)
    transformer_params: int  # parameters and persistent buffers (SD3's position embedding)
    hidden: int  # attention heads x head dim
    layers: int  # transformer blocks (FLUX: double + single)
    pixels_per_token: int  # image pixels per token side: VAE scale x patch (FLUX: x the 2x2 packing)
    text_encoder_params: dict[str, int]
    vae_params: int
    vae_fullres_channels: int  # widest decoder channel count at full image resolution
    latent_channels: int
    vae_scale: int
    embed_dim: int  # prompt embedding width (joint_attention_dim)
    pooled_dim: int
    clip_tokens: int  # SD3: the 77 CLIP tokens ahead of the T5 ones; FLUX: 0
    # (module name, in_features, out_features) of every 2-D transformer weight, for exact LoRA counts;
    # empty for the published table, which approximates them.
    linears: tuple[tuple[str, int, int], ...] = ()
    # scheduler_config.json: the resolution-dependent shift's constants (sampling.shift_mode=resolution) for the
    # dry run's grids; empty: FLUX.1's defaults (models/schedule.py resolution_sigmas).
    scheduler: dict = field(default_factory=dict, hash=False)


def image_tokens(spec: PipelineSpec, resolution: int, frames: int = 1) -> int:
    """(resolution / (VAE scale x patch))^2, times the latent frames of a video family's `frames` (model.num_frames)."""
    return (resolution // spec.pixels_per_token) ** 2 * family_of(spec.family).latent_frames(frames)


def text_tokens(spec: PipelineSpec, max_sequence_length: int) -> int:
    """SD3: 77 CLIP tokens + the T5 length; FLUX: the T5 length."""
    return spec.clip_tokens + max_sequence_length


def lora_params(spec: PipelineSpec, target_modules: Iterable[str], rank: int) -> int:
    """r (in + out) per adapted Linear (peft matches a module whose name is, or ends with '.' + , a target).
    Without the module list (a hub id not in the local cache): len(targets) x layers x r x 2 hidden."""
    targets = list(target_modules)
    if not spec.linears:
        return len(targets) * spec.layers * rank * 2 * spec.hidden
    return sum(
        rank * (fan_in + fan_out)
        for name, fan_in, fan_out in spec.linears
        if any(name == t or name.endswith("." + t) for t in targets)
    )


@dataclass(frozen=True)
class RewardSpec:
    """A scorer's weights and the live activation elements of one image in one block (tokens x width)."""

    params: int
    elements_per_image: int = 0


# ----------------------------------------------------------------------------- reading a model's spec


def safetensors_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the headers of every *.safetensors file in `folder` (8-byte little-endian
    header length, then a JSON header: the format's definition); the tensor data is never read."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as f:
            prefix = f.read(8)
            try:
                header = json.loads(f.read(struct.unpack("<Q", prefix)[0]))
                shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
            except (struct.error, ValueError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"{file} is not a safetensors file (its header does not read: {err})") from None
    return shapes


def count_params(shapes: dict[str, list[int]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def pipeline_spec(folder: Path, family: str) -> PipelineSpec:
    """Read a diffusers pipeline folder: each component's config.json and safetensors headers."""
    tconf = json.loads((folder / "transformer" / "config.json").read_text())
    vconf = json.loads((folder / "vae" / "config.json").read_text())
    shapes = safetensors_shapes(folder / "transformer")
    encoders = {name: count_params(safetensors_shapes(folder / name))
                for name in ("text_encoder", "text_encoder_2", "text_encoder_3") if (folder / name).is_dir()}
    entry = family_of(family)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    return PipelineSpec(
        family=family,
        transformer_params=count_params(shapes),
        text_encoder_params=encoders,
        vae_params=count_params(safetensors_shapes(folder / "vae")),
        clip_tokens=entry.clip_tokens,
        linears=tuple((name[: -len(".weight")], s[1], s[0]) for name, s in shapes.items()
                      if name.endswith(".weight") and len(s) == 2),
        scheduler=json.loads(scheduler.read_text()) if scheduler.is_file() else {},
        **entry.architecture(tconf, vconf),  # the family reads its own config keys (models/families.py)
    )


# The published pipelines the presets name, for a dry run without the weights at hand. Parameter counts
# of diffusers/transformers models built on the meta device from each model's published config.json
# (stabilityai/stable-diffusion-3.5-medium, black-forest-labs/FLUX.1-dev: transformer, text encoders with
# vocabularies 49408 and 32128, VAE); SD3.5's includes its 384 x 384 x 1536 position-embedding buffer.
_CLIP_L, _CLIP_G, _T5_XXL, _VAE = 123_650_304, 694_659_840, 4_762_310_656, 83_819_683
_VAE_FLUX2 = 84_046_372  # AutoencoderKLFlux2, its batch-norm buffers included
_FLUX2_SCHEDULER = {"use_dynamic_shifting": True, "time_shift_type": "exponential", "shift": 3.0}  # mu: FLUX.2's own
PUBLISHED_PIPELINES = {
    "stabilityai/stable-diffusion-3.5-medium": PipelineSpec(
        "sd3", 2_243_171_520 + 384 * 384 * 1536, 1536, 24, 16,
        {"text_encoder": _CLIP_L, "text_encoder_2": _CLIP_G, "text_encoder_3": _T5_XXL}, _VAE, 256, 16, 8, 4096, 2048, 77),
    "black-forest-labs/FLUX.1-dev": PipelineSpec(
        "flux", 11_901_408_320, 3072, 57, 16, {"text_encoder": 123_060_480, "text_encoder_2": _T5_XXL}, _VAE,
        256, 16, 8, 4096, 768, 0),
    # Qwen/Qwen-Image: the 60-block MMDiT; Qwen2.5-VL-7B as QwenImagePipeline loads it (Qwen2_5_VLForConditionalGeneration:
    # the language model, its vision tower and an untied lm_head, vocabulary 152064); AutoencoderKLQwenImage (base_dim
    # 96, dim_mult 1 2 4 4: 192 channels at full resolution); scheduler_config.json's dynamic shift.
    "Qwen/Qwen-Image": PipelineSpec(
        "qwen_image", 20_430_401_088, 3072, 60, 16, {"text_encoder": 8_292_166_656}, 126_892_531, 192, 16, 8, 3584, 0, 0,
        scheduler={"base_image_seq_len": 256, "max_image_seq_len": 8192, "base_shift": 0.5, "max_shift": 0.9,
                   "shift_terminal": 0.02, "time_shift_type": "exponential", "use_dynamic_shifting": True}),
    # Tongyi-MAI/Z-Image-Turbo: 30 blocks + 2 noise- and 2 context-refiner blocks at 3840 (32 layers over every token:
    # models/family_z_image.py); Qwen3-4B as Qwen3Model (no lm_head, vocabulary 151936); FLUX.1's VAE; a static shift.
    "Tongyi-MAI/Z-Image-Turbo": PipelineSpec(
        "z_image", 6_154_908_736, 3840, 32, 16, {"text_encoder": 4_022_468_096}, _VAE, 256, 16, 8, 2560, 0, 0),
    # stabilityai/stable-diffusion-3.5-large: SD3.5-Medium's pipeline with the 38-block, 2432-wide MMDiT (38 heads,
    # no dual-attention layers) and its 192 x 192 x 2432 position-embedding buffer; the same encoders and VAE.
    "stabilityai/stable-diffusion-3.5-large": PipelineSpec(
        "sd3", 8_056_627_520 + 192 * 192 * 2432, 2432, 38, 16,
        {"text_encoder": _CLIP_L, "text_encoder_2": _CLIP_G, "text_encoder_3": _T5_XXL}, _VAE, 256, 16, 8, 4096, 2048, 77),
    # FLUX.2 (scripts/build_flux2.py has the configs): dev's 8 + 48 blocks at 6144 with Mistral-Small-3.1-24B
    # (Mistral3ForConditionalGeneration, vision tower and untied lm_head, vocabulary 131072); klein 4B / 9B (5 + 20
    # blocks at 3072, 8 + 24 at 4096) with Qwen3-4B (tied embeddings) / Qwen3-8B as Qwen3ForCausalLM; AutoencoderKLFlux2
    # (32 channels, its batch-norm statistics); the distilled and base klein models share their architecture.
    "black-forest-labs/FLUX.2-dev": PipelineSpec(
        "flux2", 32_223_281_152, 6144, 56, 16, {"text_encoder": 24_011_361_280}, _VAE_FLUX2, 256, 32, 8, 15360, 0, 0,
        scheduler=_FLUX2_SCHEDULER),
    **{f"black-forest-labs/FLUX.2-klein-{kind}4B": PipelineSpec(
        "flux2_klein", 3_875_544_576, 3072, 25, 16, {"text_encoder": 4_022_468_096}, _VAE_FLUX2, 256, 32, 8, 7680, 0, 0,
        scheduler=_FLUX2_SCHEDULER) for kind in ("", "base-")},
    **{f"black-forest-labs/FLUX.2-klein-{kind}9B": PipelineSpec(
        "flux2_klein", 9_078_581_248, 4096, 32, 16, {"text_encoder": 8_190_735_360}, _VAE_FLUX2, 256, 32, 8, 12288, 0, 0,
        scheduler=_FLUX2_SCHEDULER) for kind in ("", "base-")},
    # Wan2.1-T2V 1.3B / 14B (scripts/build_wan.py has the configs): 30 blocks at 1536 / 40 at 5120, UMT5-XXL's encoder
    # (UMT5EncoderModel, vocabulary 256384), AutoencoderKLWan (Qwen-Image's VAE architecture: 192 channels at full
    # resolution); the module list is the published one (models/family_wan.py wan_linears), so LoRA counts are exact.
    **{f"Wan-AI/Wan2.1-T2V-{size}-Diffusers": PipelineSpec(
        "wan", params, dim, layers, 16, {"text_encoder": 5_680_910_336}, 126_892_531, 192, 16, 8, 4096, 0, 0,
        linears=wan_linears(dim, ffn, layers)) for size, params, dim, ffn, layers in (
            ("1.3B", 1_418_996_800, 1536, 8960, 30), ("14B", 14_288_491_584, 5120, 13824, 40))},
}
# Default scorer weights (rewards/: the hub ids the scorers load without a `model` option): parameters
# (meta-device count of the CLIP configs; Mask2Former Swin-S from its model card) and the live elements of
# one image in one block (a 224 px ViT/14: 257 tokens x width; Swin-S: its first stage, (384 / 4)^2 x 96).
PUBLISHED_REWARDS = {
    "yuvalkirstain/PickScore_v1": RewardSpec(986_109_441, 257 * 1280),  # CLIP ViT-H/14
    "openai/clip-vit-large-patch14": RewardSpec(427_616_513, 257 * 1024),  # CLIP ViT-L/14
    "facebook/mask2former-swin-small-coco-instance": RewardSpec(69_000_000, 96 * 96 * 96),
    # The vlm_judge / soft_tifa judges (rewards/vlm_judge.py): Qwen2_5_VLForConditionalGeneration built on the meta
    # device from the published configs (7B: untied lm_head, vocabulary 152064; 3B: tied, 151936). Per image, one
    # (image, question) forward; its widest block is the vision tower's at 512 px: (504 / 14)^2 = 1296 patches x 1280.
    "Qwen/Qwen2.5-VL-7B-Instruct": RewardSpec(8_292_166_656, 1296 * 1280),
    "Qwen/Qwen2.5-VL-3B-Instruct": RewardSpec(3_754_622_976, 1296 * 1280),
    # unified_reward / unified_reward_pairwise (rewards/unified_reward.py): UnifiedReward's 7B judges are fine-tunes of
    # Qwen2.5-VL-7B-Instruct with its architecture (their model cards; the -qwen-7b shards sum to 16.6 GB, 8.29 B in
    # bf16). A pairwise forward holds two images per pair: 2 * options.batch_size images.
    **{f"CodeGoat24/UnifiedReward-{series}qwen-7b": RewardSpec(8_292_166_656, 1296 * 1280) for series in ("", "2.0-")},
    # hpsv3 (rewards/hpsv3.py) loads Qwen2VLModel without the LM head (8,291,375,616 with it, counted on the meta
    # device from the published config); each image is resized to 448 x 448: (448 / 14)^2 = 1024 patches x 1280.
    "Qwen/Qwen2-VL-7B-Instruct": RewardSpec(7_746_378_240, 1024 * 1280),
}


def vision_elements(config: dict) -> int:
    """Tokens x width of a CLIP-style vision tower's config.json (0 for other models)."""
    vision = config.get("vision_config") or {}
    if not {"image_size", "patch_size", "hidden_size"} <= vision.keys():
        return 0
    return ((vision["image_size"] // vision["patch_size"]) ** 2 + 1) * vision["hidden_size"]


def reward_spec(weights: list[str]) -> RewardSpec | None:
    """The sum over a scorer's weights (local folders by their safetensors headers, or published hub ids);
    None when one is neither."""
    total = RewardSpec(0, 0)
    for value in weights:
        folder = Path(value).expanduser()
        if folder.is_dir():
            config = folder / "config.json"
            elements = vision_elements(json.loads(config.read_text())) if config.is_file() else 0
            total = RewardSpec(total.params + count_params(safetensors_shapes(folder)), total.elements_per_image + elements)
        elif value in PUBLISHED_REWARDS:
            spec = PUBLISHED_REWARDS[value]
            total = RewardSpec(total.params + spec.params, total.elements_per_image + spec.elements_per_image)
        else:
            return None
    return total
