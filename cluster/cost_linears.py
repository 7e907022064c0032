"""The published transformers' module lists: every 2-D weight, by name and shape, for a dry run that has only
a hub id (cluster/model_specs.py `PUBLISHED_PIPELINES` holds the rest of each architecture).

A table of its own, apart from the FLOP arithmetic (cluster/cost_flops.py) that reads it: a model family
that should be costed without its weights adds one entry here, which tests/test_cost_model.py and the
family's test rebuild from the published config on the meta device.
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster.model_specs import PUBLISHED_PIPELINES, PipelineSpec


def _flux2_linears(h: int, double: int, single: int, joint: int, guidance: bool) -> tuple:
    """FLUX.2's transformer (diffusers' Flux2Transformer2DModel, bias-free): modulations shared by all blocks,
    SwiGLU MLPs of 3 h (linear_in 2 x 3 h), single blocks with q, k, v and the MLP fused in to_qkv_mlp_proj."""
    embed = ("timestep_embedder",) + (("guidance_embedder",) if guidance else ())
    return (
        *((f"time_guidance_embed.{e}.linear_{i}", 256 if i == 1 else h, h) for e in embed for i in (1, 2)),
        ("double_stream_modulation_img.linear", h, 6 * h), ("double_stream_modulation_txt.linear", h, 6 * h),
        ("single_stream_modulation.linear", h, 3 * h), ("x_embedder", 128, h), ("context_embedder", joint, h),
        *((f"transformer_blocks.{{}}.attn.{m}", h, h, _R(0, double))
          for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")),
        *((f"transformer_blocks.{{}}.{ff}.linear_in", h, 6 * h, _R(0, double)) for ff in ("ff", "ff_context")),
        *((f"transformer_blocks.{{}}.{ff}.linear_out", 3 * h, h, _R(0, double)) for ff in ("ff", "ff_context")),
        ("single_transformer_blocks.{}.attn.to_qkv_mlp_proj", h, 9 * h, _R(0, single)),
        ("single_transformer_blocks.{}.attn.to_out", 4 * h, h, _R(0, single)),
        ("norm_out.linear", h, 2 * h), ("proj_out", h, 128),
    )


# Every 2-D weight of the published transformers (diffusers models built on the meta device from each
# model's published config.json: stabilityai/stable-diffusion-3.5-medium, black-forest-labs/FLUX.1-dev),
# for a dry run that has only the hub id; '{}' is the block index. tests/test_cost_model.py rebuilds them.
_R = range
# Z-Image's block stacks; the context refiner has no timestep modulation.
_Z_IMAGE_STACKS = (("layers", _R(0, 30)), ("noise_refiner", _R(0, 2)), ("context_refiner", _R(0, 2)))
PUBLISHED_LINEARS: dict[str, tuple] = {
    "stabilityai/stable-diffusion-3.5-medium": (
        ("time_text_embed.timestep_embedder.linear_1", 256, 1536), ("time_text_embed.timestep_embedder.linear_2", 1536, 1536),
        ("time_text_embed.text_embedder.linear_1", 2048, 1536), ("time_text_embed.text_embedder.linear_2", 1536, 1536),
        ("context_embedder", 4096, 1536),
        ("transformer_blocks.{}.norm1.linear", 1536, 13824, _R(0, 13)),
        ("transformer_blocks.{}.norm1.linear", 1536, 9216, _R(13, 24)),
        ("transformer_blocks.{}.norm1_context.linear", 1536, 9216, _R(0, 23)),
        ("transformer_blocks.{}.norm1_context.linear", 1536, 3072, _R(23, 24)),
        *((f"transformer_blocks.{{}}.attn.{m}", 1536, 1536, _R(0, 24))
          for m in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0")),
        ("transformer_blocks.{}.attn.to_add_out", 1536, 1536, _R(0, 23)),
        *((f"transformer_blocks.{{}}.attn2.{m}", 1536, 1536, _R(0, 13)) for m in ("to_q", "to_k", "to_v", "to_out.0")),
        ("transformer_blocks.{}.ff.net.0.proj", 1536, 6144, _R(0, 24)), ("transformer_blocks.{}.ff.net.2", 6144, 1536, _R(0, 24)),
        ("transformer_blocks.{}.ff_context.net.0.proj", 1536, 6144, _R(0, 23)),
        ("transformer_blocks.{}.ff_context.net.2", 6144, 1536, _R(0, 23)),
        ("norm_out.linear", 1536, 3072), ("proj_out", 1536, 64),
    ),
    "black-forest-labs/FLUX.1-dev": (
        ("time_text_embed.timestep_embedder.linear_1", 256, 3072), ("time_text_embed.timestep_embedder.linear_2", 3072, 3072),
        ("time_text_embed.guidance_embedder.linear_1", 256, 3072), ("time_text_embed.guidance_embedder.linear_2", 3072, 3072),
        ("time_text_embed.text_embedder.linear_1", 768, 3072), ("time_text_embed.text_embedder.linear_2", 3072, 3072),
        ("context_embedder", 4096, 3072), ("x_embedder", 64, 3072),
        ("transformer_blocks.{}.norm1.linear", 3072, 18432, _R(0, 19)),
        ("transformer_blocks.{}.norm1_context.linear", 3072, 18432, _R(0, 19)),
        *((f"transformer_blocks.{{}}.attn.{m}", 3072, 3072, _R(0, 19))
          for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")),
        ("transformer_blocks.{}.ff.net.0.proj", 3072, 12288, _R(0, 19)), ("transformer_blocks.{}.ff.net.2", 12288, 3072, _R(0, 19)),
        ("transformer_blocks.{}.ff_context.net.0.proj", 3072, 12288, _R(0, 19)),
        ("transformer_blocks.{}.ff_context.net.2", 12288, 3072, _R(0, 19)),
        ("single_transformer_blocks.{}.norm.linear", 3072, 9216, _R(0, 38)),
        ("single_transformer_blocks.{}.proj_mlp", 3072, 12288, _R(0, 38)),
        ("single_transformer_blocks.{}.proj_out", 15360, 3072, _R(0, 38)),
        *((f"single_transformer_blocks.{{}}.attn.{m}", 3072, 3072, _R(0, 38)) for m in ("to_q", "to_k", "to_v")),
        ("norm_out.linear", 3072, 6144), ("proj_out", 3072, 64),
    ),
    "Qwen/Qwen-Image": (  # its published transformer/config.json (tests/test_family_qwen_image.py rebuilds it)
        ("time_text_embed.timestep_embedder.linear_1", 256, 3072), ("time_text_embed.timestep_embedder.linear_2", 3072, 3072),
        ("img_in", 64, 3072), ("txt_in", 3584, 3072),
        ("transformer_blocks.{}.img_mod.1", 3072, 18432, _R(0, 60)), ("transformer_blocks.{}.txt_mod.1", 3072, 18432, _R(0, 60)),
        *((f"transformer_blocks.{{}}.attn.{m}", 3072, 3072, _R(0, 60))
          for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")),
        *((f"transformer_blocks.{{}}.{s}_mlp.net.0.proj", 3072, 12288, _R(0, 60)) for s in ("img", "txt")),
        *((f"transformer_blocks.{{}}.{s}_mlp.net.2", 12288, 3072, _R(0, 60)) for s in ("img", "txt")),
        ("norm_out.linear", 3072, 6144), ("proj_out", 3072, 64),
    ),
    "Tongyi-MAI/Z-Image-Turbo": (  # its published transformer/config.json (tests/test_family_z_image.py rebuilds it)
        ("all_x_embedder.2-1", 64, 3840), ("all_final_layer.2-1.linear", 3840, 64),
        ("all_final_layer.2-1.adaLN_modulation.1", 256, 3840), ("t_embedder.mlp.0", 256, 1024), ("t_embedder.mlp.2", 1024, 256),
        ("cap_embedder.1", 2560, 3840),
        *((f"{stack}.{{}}.attention.{m}", 3840, 3840, blocks) for stack, blocks in _Z_IMAGE_STACKS
          for m in ("to_q", "to_k", "to_v", "to_out.0")),
        *((f"{stack}.{{}}.feed_forward.{m}", 3840, 10240, blocks) for stack, blocks in _Z_IMAGE_STACKS for m in ("w1", "w3")),
        *((f"{stack}.{{}}.feed_forward.w2", 10240, 3840, blocks) for stack, blocks in _Z_IMAGE_STACKS),
        *((f"{stack}.{{}}.adaLN_modulation.0", 256, 15360, blocks) for stack, blocks in _Z_IMAGE_STACKS[:2]),
    ),
    "stabilityai/stable-diffusion-3.5-large": (  # no dual-attention blocks; the last block's context is pre-only
        ("time_text_embed.timestep_embedder.linear_1", 256, 2432), ("time_text_embed.timestep_embedder.linear_2", 2432, 2432),
        ("time_text_embed.text_embedder.linear_1", 2048, 2432), ("time_text_embed.text_embedder.linear_2", 2432, 2432),
        ("context_embedder", 4096, 2432),
        ("transformer_blocks.{}.norm1.linear", 2432, 14592, _R(0, 38)),
        ("transformer_blocks.{}.norm1_context.linear", 2432, 14592, _R(0, 37)),
        ("transformer_blocks.{}.norm1_context.linear", 2432, 4864, _R(37, 38)),
        *((f"transformer_blocks.{{}}.attn.{m}", 2432, 2432, _R(0, 38))
          for m in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0")),
        ("transformer_blocks.{}.attn.to_add_out", 2432, 2432, _R(0, 37)),
        ("transformer_blocks.{}.ff.net.0.proj", 2432, 9728, _R(0, 38)), ("transformer_blocks.{}.ff.net.2", 9728, 2432, _R(0, 38)),
        ("transformer_blocks.{}.ff_context.net.0.proj", 2432, 9728, _R(0, 37)),
        ("transformer_blocks.{}.ff_context.net.2", 9728, 2432, _R(0, 37)),
        ("norm_out.linear", 2432, 4864), ("proj_out", 2432, 64),
    ),
    "black-forest-labs/FLUX.2-dev": _flux2_linears(6144, 8, 48, 15360, guidance=True),
    "black-forest-labs/FLUX.2-klein-4B": _flux2_linears(3072, 5, 20, 7680, guidance=False),
    "black-forest-labs/FLUX.2-klein-9B": _flux2_linears(4096, 8, 24, 12288, guidance=False),
}  # fmt: skip


def expand_linears(table: Iterable[tuple]) -> tuple[tuple[str, int, int], ...]:
    """PUBLISHED_LINEARS rows -> (name, in, out) per module."""
    out = []
    for row in table:
        name, fan_in, fan_out, *blocks = row
        out += [(name.format(i), fan_in, fan_out) for i in (blocks[0] if blocks else [None])]
    return tuple(out)


def spec_linears(spec: PipelineSpec) -> tuple[tuple[str, int, int], ...] | None:
    """The spec's module list, or the published one of the same architecture; None when neither."""
    if spec.linears:
        return spec.linears
    hub = next((k for k, v in PUBLISHED_PIPELINES.items() if v == spec and k in PUBLISHED_LINEARS), None)
    return expand_linears(PUBLISHED_LINEARS[hub]) if hub else None
