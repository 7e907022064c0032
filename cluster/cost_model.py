"""The cost model: how long each GPU works in one iteration, and its busy share, from FLOP and byte counts.

`launch.py --dry-run` prints it beside the memory plan (cluster/memory_plan.py), for the config's layout and
for the other one on the same GPUs, so a user sees what `cluster.layout` buys before renting the cluster.
Like the memory plan it reads only configs and safetensors headers (and runs the algorithm's sampler on
2 x 2 latents to count its forwards); no weights load.

What it counts, per iteration:
- sampling: transformer rows = the NFE of the algorithm unit's own sampler (models/sampling.py counts one
  evaluation per latent per step) x the family's CFG rows, per prompt group;
- VAE decode: `images_per_group` decodes per group (closed form over the decoder's convolutions);
- rewards: each scorer's FLOPs per image (CLIP towers from their configs; other weights roughly);
- learner: the rows one micro-batch forwards (the unit's `learner_inputs_per_micro_batch`) over the items
  the learner trains on: the per-step family's trained transitions (it recomputes their log-probs with
  gradients), the forward-process family's kept samples x algorithm.train_timesteps; each with its forward,
  backward and, under gradient checkpointing, the recomputed forward; plus forwards without gradients: the
  reference policy (learner.beta > 0), the forward-process family's old policy, recomputed old log-probs;
- gradient reduce: ZeRO's fp32 gradient collectives (learner/engine.py: communication_data_type fp32);
- weight sync (split only): the trainable weights in their dtype, over NVLink (collective) or twice over
  PCIe (object store: device to host, host to device).
Not counted: prompt encoding (cached per prompt), the optimizer step (memory-bound, milliseconds),
evaluation and probes (not every iteration), host-side work and Python overheads.

Transformer FLOPs per row: 2 x (each weight matrix x the tokens it sees) + 4 x tokens_q x tokens_kv x width
per attention (QK^T and AV). In an MMDiT (SD3, FLUX) the adaLN modulation and timestep embeddings see one
vector per row, a dual-stream block's image weights see the image tokens and its context weights the text
tokens, and a single-stream block sees both: counted that way the sum agrees with torch's FlopCounterMode
(tests/test_cost_model.py), where 2 x params x tokens would count SD3.5-Medium twice over. Backward: the
input gradients of every matmul (1x its forward) and of attention (2x: dS, then dQ, dK, dV), plus the weight
gradients of the trained matmuls (1x; for LoRA only the adapters'); so full fine-tuning's backward is 2x
its forward and LoRA's about 1x.

Seconds = FLOPs / (peak x UTILISATION), bytes / (link x LINK_UTILISATION). The per-FLOP times of the
components measured on CPU agree (benchmarks/cost_calibration.py, docs/benchmarks.md), which is what lets
one utilisation stand for all of them; the absolute value (0.4) is an assumption, not a GPU measurement.

Iteration time is the slowest device's critical path. split: rollout GPUs sample while learner GPUs wait,
then the learners train while the rollout GPUs wait, then the weights sync (async: sampling of the next
iteration overlaps training). hybrid: every worker samples its groups, then trains its share. Reward actors
score while sampling runs, on the GPUs they are placed on. A device's busy share = its busy seconds /
the iteration's seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cluster.memory_plan import DTYPE_BYTES, PRECISION_BYTES, images_per_group, learner_inputs_per_micro_batch
from cluster.model_specs import (
    PUBLISHED_PIPELINES,
    PipelineSpec,
    count_params,
    image_tokens,
    safetensors_shapes,
    text_tokens,
)
from models.families import family_of

# ----------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Accelerator:
    """Peak numbers of one GPU (vendor datasheets, dense: no 2:4 sparsity)."""

    name: str
    memory_gb: float
    flops: dict[str, float]  # peak FLOP/s by the dtype the matmuls run in
    nvlink_bytes: float  # per GPU per direction
    pcie_bytes: float  # per direction (PCIe Gen5 x16)
    network_bytes: float  # per GPU between nodes (one 400 Gb/s NIC per GPU)


# float32 is the CUDA-core peak: torch leaves TF32 matmuls off by default and nothing here turns them on.
_HOPPER_FLOPS = {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}
ACCELERATORS = (
    Accelerator("H100 SXM", 80, _HOPPER_FLOPS, 450e9, 64e9, 50e9),
    Accelerator(
        "H200 SXM", 141, _HOPPER_FLOPS, 450e9, 64e9, 50e9
    ),  # the H100's compute, more and faster memory
)
GPUS_PER_NODE = 8  # NVLink spans one node; collectives between nodes use the network
UTILISATION = 0.4  # fraction of peak FLOP/s every compute term reaches (an assumption, see the docstring)
LINK_UTILISATION = 0.7  # fraction of a link's bandwidth a large transfer reaches


def accelerator_for(gpu_memory_gb: float) -> Accelerator:
    """The smallest listed GPU with at least cluster.gpu_memory_gb of memory (else the largest)."""
    fitting = [a for a in ACCELERATORS if a.memory_gb >= gpu_memory_gb - 1e-9]
    return (
        min(fitting, key=lambda a: a.memory_gb) if fitting else max(ACCELERATORS, key=lambda a: a.memory_gb)
    )


# ----------------------------------------------------------------------------- transformer FLOPs


@dataclass(frozen=True)
class TransformerCounts:
    """A transformer's weight-matrix elements by the tokens they see, and its attentions."""

    per_row: int = 0  # adaLN modulation, timestep / guidance / pooled-text embeddings: once per row
    image: int = 0  # image-stream weights: patch embedding, dual-stream blocks' image side, output projection
    text: int = 0  # text-stream weights: context embedder, dual-stream blocks' context side
    joint: int = 0  # single-stream blocks: every token
    attentions: tuple[tuple[str, int], ...] = ()  # (the sequence it attends over: 'joint' | 'image', width)


def _block(name: str) -> str | None:
    """'transformer_blocks.3' of 'transformer_blocks.3.attn.to_q' (None outside numbered blocks)."""
    parts = name.split(".")
    return next((".".join(parts[: i + 1]) for i, p in enumerate(parts) if p.isdigit()), None)


def _is_text(name: str) -> bool:
    """diffusers' joint-attention naming of the context stream: context_embedder, ff_context,
    norm1_context, add_{q,k,v}_proj, to_add_out."""
    leaf = name.split(".")[-1]
    # Qwen-Image names its text stream txt_in / txt_mod / txt_mlp; Z-Image its caption embedder cap_embedder.
    text_part = any(p.startswith(("txt_", "cap_")) for p in name.split("."))
    return "context" in name or text_part or leaf.startswith("add_") or leaf == "to_add_out"


# Per-row modulation besides norm*.linear: Qwen-Image's img_mod / txt_mod, Z-Image's adaLN_modulation, FLUX.2's
# modulations shared by all blocks (double_stream_modulation_img / _txt, single_stream_modulation).
_MODULATION = ("norm", "img_mod", "txt_mod", "adaLN_modulation", "double_stream_modulation", "single_stream_modulation")


def _kind(name: str, dual_blocks: set[str]) -> str:
    parts = name.split(".")
    if parts[0].startswith(("time", "t_embedder")) or any(p.startswith(_MODULATION) for p in parts):
        return "per_row"  # time_text_embed.*, adaLN's norm*.linear: the modulation of one row
    if _is_text(name):
        return "text"
    if parts[0] == "noise_refiner":  # Z-Image refines the image tokens alone before the joint blocks
        return "image"
    block = _block(name)
    return "joint" if block is not None and block not in dual_blocks else "image"


def transformer_counts(linears: Iterable[tuple[str, int, int]]) -> TransformerCounts:
    """Sort (module name, in, out) of every 2-D transformer weight (PipelineSpec.linears) by the tokens it
    sees. A numbered block with context-stream weights is dual-stream (its other weights see the image
    tokens); one without is single-stream (every token). An attention is joint when its block is
    single-stream or it has add_q_proj beside to_q (SD3's and FLUX's joint attention); else it attends
    over the image tokens (SD3.5's MMDiT-X attn2)."""
    linears = list(linears)
    names = {n for n, _, _ in linears}
    dual = {b for n in names if _is_text(n) and (b := _block(n)) is not None}
    sums = {"per_row": 0, "image": 0, "text": 0, "joint": 0}
    attentions = []
    for name, fan_in, fan_out in linears:
        kind = _kind(name, dual)
        sums[kind] += fan_in * fan_out
        if name.endswith(".to_q") or name == "to_q":
            joint = kind == "joint" or name[: -len("to_q")] + "add_q_proj" in names
            attentions.append(("joint" if joint else "image", fan_out))
        elif name.endswith(".to_qkv_mlp_proj"):  # FLUX.2's single block: q, k, v and the MLP in one matmul
            attentions.append(("joint", fan_in))  # its queries are as wide as the block
    return TransformerCounts(**sums, attentions=tuple(attentions))


def lora_counts(
    linears: Iterable[tuple[str, int, int]], targets: Sequence[str], rank: int
) -> TransformerCounts:
    """The LoRA adapters' matrices (A: in x r, B: r x out) of every targeted Linear, by the tokens they see
    (peft matches a module whose name is, or ends with '.' + , a target: cluster/model_specs.py lora_params)."""
    linears = list(linears)
    names = {n for n, _, _ in linears}
    dual = {b for n in names if _is_text(n) and (b := _block(n)) is not None}
    sums = {"per_row": 0, "image": 0, "text": 0, "joint": 0}
    for name, fan_in, fan_out in linears:
        if any(name == t or name.endswith("." + t) for t in targets):
            sums[_kind(name, dual)] += rank * (fan_in + fan_out)
    return TransformerCounts(**sums)


def forward_parts(counts: TransformerCounts, image: int, text: int) -> tuple[float, float]:
    """(matmul FLOPs, attention FLOPs) of one row's forward with `image` + `text` tokens."""
    matmul = 2.0 * (
        counts.per_row + counts.image * image + counts.text * text + counts.joint * (image + text)
    )
    tokens = {"joint": image + text, "image": image}
    return matmul, sum(4.0 * tokens[seq] ** 2 * width for seq, width in counts.attentions)


def train_flops(matmul: float, attention: float, lora: float, *, full: bool, checkpointing: bool) -> float:
    """FLOPs of one row's forward + backward (+ the recomputed forward under gradient checkpointing):
    `matmul`, `attention` and `lora` are the forward's parts (lora: the adapters' matmuls, 0 without)."""
    forward = matmul + attention + lora
    backward = (matmul + lora + 2.0 * attention) + (matmul if full else lora)
    return forward + backward + (forward if checkpointing else 0.0)


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


# ----------------------------------------------------------------------------- VAE and reward FLOPs


def _conv(c_in: int, c_out: int, k: int, side: int) -> float:
    return 2.0 * k * k * c_in * c_out * side * side


def vae_decode_flops(
    block_out_channels: Sequence[int],
    layers_per_block: int,
    latent_channels: int,
    resolution: int,
    mid_attention: bool = True,
) -> float:
    """FLOPs of diffusers' AutoencoderKL decoder for one image: conv_in, the mid block (two ResNet blocks and
    one single-head attention over the latent pixels), then per resolution layers_per_block + 1 ResNet blocks
    (two 3x3 convs, a 1x1 shortcut when the width changes) and a 3x3 conv after each 2x upsampling, and
    conv_out. Normalisations and activations are not counted (elementwise)."""
    channels = list(reversed(block_out_channels))
    side = resolution // 2 ** (len(channels) - 1)
    ch = channels[0]

    def resnet(c_in: int, c_out: int, s: int) -> float:
        return (
            _conv(c_in, c_out, 3, s)
            + _conv(c_out, c_out, 3, s)
            + (_conv(c_in, c_out, 1, s) if c_in != c_out else 0.0)
        )

    flops = _conv(latent_channels, ch, 3, side) + 2 * resnet(ch, ch, side)
    if mid_attention:
        tokens = side * side
        flops += 2.0 * 4 * ch * ch * tokens + 4.0 * tokens * tokens * ch
    for i, width in enumerate(channels):
        for _ in range(layers_per_block + 1):
            flops += resnet(ch, width, side)
            ch = width
        if i < len(channels) - 1:
            side *= 2
            flops += _conv(ch, ch, 3, side)
    return flops + _conv(ch, 3, 3, side)


# The published pipelines' VAE (both presets' families share it: scripts/build_real_width.py, "Published").
PUBLISHED_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "mid_block_add_attention": True,
}


def tower_flops(layers: int, width: int, mlp: int, tokens: int) -> float:
    """A pre-norm transformer encoder (CLIP's towers): q, k, v, out and the MLP per token, attention."""
    return layers * (2.0 * tokens * (4 * width * width + 2 * width * mlp) + 4.0 * tokens * tokens * width)


def clip_flops(config: dict) -> float:
    """One image through a CLIP vision tower ((image / patch)^2 + 1 tokens, its patch embedding) and one
    prompt through the text tower at its 77-token maximum (the scorers pad to the batch's longest: an upper
    bound)."""
    v, t = config["vision_config"], config["text_config"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    embed = 2.0 * patches * 3 * v["patch_size"] ** 2 * v["hidden_size"]
    return (
        embed
        + tower_flops(v["num_hidden_layers"], v["hidden_size"], v["intermediate_size"], patches + 1)
        + tower_flops(t["num_hidden_layers"], t["hidden_size"], t["intermediate_size"], 77)
    )


# FLOPs per scored image of the scorers' default hub weights. CLIP: `clip_flops` of the published configs
# (ViT-H/14 and ViT-L/14 at 224 px). Mask2Former Swin-S: 313 GFLOPs at 800 x 1333 (Cheng et al. 2022,
# Table 1) scaled to its processor's 384 px shortest edge; GenEval's colour check adds a CLIP-L image per
# detected object, counted as one.
_CLIP_H = {
    "vision_config": {
        "image_size": 224,
        "patch_size": 14,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
    },
    "text_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24},
}
_CLIP_L = {
    "vision_config": {
        "image_size": 224,
        "patch_size": 14,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
    },
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12},
}
PUBLISHED_REWARD_FLOPS = {
    "yuvalkirstain/PickScore_v1": clip_flops(_CLIP_H),
    "openai/clip-vit-large-patch14": clip_flops(_CLIP_L),
    "facebook/mask2former-swin-small-coco-instance": 313e9 * 384 * 384 / (800 * 1333),
}  # fmt: skip
ROUGH_TOKENS = 257  # a weight folder that is not CLIP: 2 x params x a 224 px ViT/14's tokens (rough)


def reward_flops(weights: Sequence[str]) -> tuple[float, bool]:
    """(FLOPs per image, exact) summed over a scorer's weights (local folders or hub ids, as
    cluster/preflight.py lists them); a programmatic scorer (no weights) costs nothing on a GPU."""
    total, exact = 0.0, True
    for value in weights:
        folder = Path(value).expanduser()
        config = folder / "config.json"
        if value in PUBLISHED_REWARD_FLOPS:
            total += PUBLISHED_REWARD_FLOPS[value]
        elif (
            config.is_file()
            and {"vision_config", "text_config"} <= (conf := json.loads(config.read_text())).keys()
        ):
            total += clip_flops({k: {**_CLIP_DEFAULTS[k], **(conf[k] or {})} for k in _CLIP_DEFAULTS})
        elif folder.is_dir():
            total += 2.0 * count_params(safetensors_shapes(folder)) * ROUGH_TOKENS
            exact = False
        else:
            return 0.0, False
    return total, exact


# transformers' CLIP config defaults (a saved config.json omits the values equal to them).
_CLIP_DEFAULTS = {
    "vision_config": {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
    },
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12},
}


# ----------------------------------------------------------------------------- what one iteration computes


@dataclass(frozen=True)
class Counts:
    """What one iteration computes, per prompt group (the algorithm unit's sampler and the learner's plan)."""

    groups: int  # prompt groups per iteration
    sampling_rows: int  # transformer rows sampling one group: NFE x the family's CFG rows
    nfe: int  # the unit's own NFE per group
    images: int  # images decoded and scored per group
    items: int  # what the learner's micro-batches are made of, per group: transitions or (sample, timestep)
    rows_per_item: float  # transformer rows one item costs in a learner forward (shared inputs, CFG)
    frozen_passes: int  # forwards without gradients per item: reference, old policy, recomputed log-probs
    frozen_what: tuple[str, ...] = ()


def sample_probe(cfg):
    """The algorithm unit's sampler run once on 1 x 2 x 2 latents with a zero velocity: its own record of
    NFE, transitions and what the learner trains on (iteration 0)."""
    import torch

    from models.sampling import sample_group
    from models.schedule import sigma_schedule

    s = cfg.sampling
    sigmas = sigma_schedule(s.sigma_schedule, s.num_steps, s.shift)
    return sample_group(
        cfg.algorithm,
        s,
        lambda x, sigma: torch.zeros_like(x),
        lambda n, generator: torch.randn(n, 1, 2, 2, generator=generator),
        sigmas,
        generator=torch.Generator().manual_seed(0),
        iteration=0,
    )


def iteration_counts(cfg) -> Counts:
    """Per-group counts of one iteration. The learner side mirrors its plans: learner/per_step.py recomputes
    the log-prob of every trained transition (one forward per distinct input of a micro-batch), with a
    reference forward when learner.beta > 0 and, with algorithm.recompute_old_log_probs, one more before the
    first step; learner/forward_process.py re-noises each kept sample at algorithm.train_timesteps sigmas and
    forwards the old (sampling) policy always and the reference when learner.beta > 0."""
    record = sample_probe(cfg)
    cfg_rows = family_of(cfg.model.family).rows_per_sample(cfg.model.guidance_scale)
    lc, epochs = cfg.learner, cfg.learner.num_inner_epochs
    items = cfg.algorithm.learner_items(record)
    frozen = cfg.algorithm.learner_frozen_forwards(lc)
    shared = learner_inputs_per_micro_batch(cfg) / lc.micro_batch_size
    return Counts(
        groups=cfg.prompts_per_iteration,
        sampling_rows=record.nfe * cfg_rows,
        nfe=record.nfe,
        images=images_per_group(cfg),
        items=items * epochs,
        rows_per_item=shared * cfg_rows,
        frozen_passes=len(frozen),
        frozen_what=frozen,
    )


# ----------------------------------------------------------------------------- per-unit costs


@dataclass(frozen=True)
class UnitCosts:
    """FLOPs and bytes of one unit of each kind of work, and the peak each runs at."""

    sample_row: float  # one transformer row at inference (with LoRA adapters)
    train_row: float  # one row's forward + backward (+ recompute)
    frozen_row: float  # one row's forward without gradients
    decode_image: float
    reward_image: dict[str, float]  # scorer name -> FLOPs per image
    trainable_bytes: float  # the synced weights
    gradient_bytes: float  # the fp32 gradients a collective reduces
    model_flops: float  # peak FLOP/s in model.dtype
    reward_peak: dict[str, float]  # scorer name -> peak FLOP/s in its dtype
    notes: tuple[str, ...] = ()


def unit_costs(
    cfg,
    spec: PipelineSpec,
    reward_weights: Sequence[Sequence[str]],
    accelerator: Accelerator,
    vae_config: dict | None = None,
) -> UnitCosts:
    """Per-unit FLOPs from the model's spec (its module list: cluster/model_specs.py) and the scorers' weights."""
    m, notes = cfg.model, []
    image, text = image_tokens(spec, m.resolution), text_tokens(spec, m.max_sequence_length)
    linears = spec_linears(spec)
    if linears is not None:
        counts = transformer_counts(linears)
        lora = (
            lora_counts(linears, m.lora.target_modules, m.lora.rank)
            if m.lora.enabled
            else TransformerCounts()
        )
    else:  # no module list: every parameter on every token, one joint attention per layer (an over-count)
        counts = TransformerCounts(
            joint=spec.transformer_params, attentions=(("joint", spec.hidden),) * spec.layers
        )
        lora = TransformerCounts(
            joint=2 * m.lora.rank * spec.hidden * spec.layers * len(m.lora.target_modules)
            if m.lora.enabled
            else 0
        )
        notes.append("no module list for this transformer: 2 x params x tokens, an over-count")
    matmul, attention = forward_parts(counts, image, text)
    lora_flops = forward_parts(lora, image, text)[0]
    full = not m.lora.enabled
    vae = vae_config or PUBLISHED_VAE
    decode = vae_decode_flops(
        vae["block_out_channels"],
        vae["layers_per_block"],
        spec.latent_channels,
        m.resolution,
        vae.get("mid_block_add_attention", True),
    )
    rewards, peaks = {}, {}
    for scorer, weights in zip(cfg.rewards.scorers, reward_weights, strict=True):
        flops, exact = reward_flops(weights)
        rewards[scorer.name] = flops
        peaks[scorer.name] = accelerator.flops[scorer.options.get("dtype", "float32")]
        if not exact:
            notes.append(
                f"{scorer.name}: "
                + ("weights unknown, not counted" if not flops else "2 x params x 257 tokens (rough)")
            )
    trainable = (
        lora.per_row + lora.image + lora.text + lora.joint if m.lora.enabled else spec.transformer_params
    )
    synced = trainable * (PRECISION_BYTES[cfg.learner.precision] if m.lora.enabled else DTYPE_BYTES[m.dtype])
    return UnitCosts(
        sample_row=matmul + attention + lora_flops,
        train_row=train_flops(
            matmul, attention, lora_flops, full=full, checkpointing=m.gradient_checkpointing
        ),
        frozen_row=matmul + attention + lora_flops,
        decode_image=decode,
        reward_image=rewards,
        trainable_bytes=synced,
        gradient_bytes=4.0 * trainable,
        model_flops=accelerator.flops[m.dtype],
        reward_peak=peaks,
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- layouts and devices


@dataclass(frozen=True)
class Layout:
    """Where the work runs: the GPU shares of each actor kind (cluster.* and rewards.scorers[*])."""

    kind: str  # 'split' | 'hybrid'
    rollout_actors: int
    rollout_gpus: float
    learner_ranks: int
    learner_gpus: float
    rewards: tuple[tuple[str, int, float], ...]  # (scorer name, actors, GPUs per actor)
    colocate: bool = False
    async_mode: bool = False
    sync_backend: str = "collective"

    def describe(self) -> str:
        if self.kind == "hybrid":
            return f"hybrid: {self.learner_ranks} workers x {self.learner_gpus:g} GPU"
        return (
            f"split: {self.rollout_actors} rollout actors x {self.rollout_gpus:g} GPU + {self.learner_ranks} "
            f"learner ranks x {self.learner_gpus:g} GPU{', colocated' if self.colocate else ''}, "
            f"sync_backend {self.sync_backend}{', async' if self.async_mode else ''}"
        )


def layout_of(cfg) -> Layout:
    c = cfg.cluster
    return Layout(
        "split" if c.rollout_processes else "hybrid",  # hybrid: the learner ranks sample (cluster/layouts.py)
        c.num_rollout_actors,
        c.rollout_num_gpus,
        c.num_learner_ranks,
        c.learner_num_gpus,
        tuple((s.name, s.actors, s.num_gpus_per_actor) for s in cfg.rewards.scorers),
        c.colocate,
        c.async_mode,
        c.sync_backend,
    )


@dataclass
class Device:
    """One GPU: who is on it and its seconds of each component in one iteration."""

    index: int
    free: float = 1.0
    roles: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, component: str, seconds: float) -> None:
        self.seconds[component] = self.seconds.get(component, 0.0) + seconds

    @property
    def busy(self) -> float:
        return sum(self.seconds.values())

    def phase(self, components: Sequence[str]) -> float:
        return sum(self.seconds.get(k, 0.0) for k in components)


SAMPLING = ("sampling", "VAE decode", "rewards")
TRAINING = ("learner", "gradient reduce")
SYNC = ("weight sync",)
COMPONENTS = SAMPLING + TRAINING + SYNC


def _place(devices: list[Device], share: float, role: str, spread: bool, start: int = 0) -> Device:
    """First fit (a placement group's bundles: PACK) or, with `spread`, the next device from `start` with
    room (fractional actors outside the group); a new device when none has room."""
    order = devices[start:] + devices[:start] if spread else devices
    device = next((d for d in order if d.free >= share - 1e-9), None)
    if device is None:
        device = Device(len(devices))
        devices.append(device)
    device.free -= share
    device.roles.append(role)
    return device


def _split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class LayoutCost:
    layout: Layout
    devices: list[Device]
    iteration: float
    phases: dict[str, float]
    cpu_roles: list[str]

    @property
    def min_share(self) -> float:
        return min((d.busy / self.iteration for d in self.devices), default=0.0)


def layout_cost(cfg, layout: Layout, counts: Counts, unit: UnitCosts, accelerator: Accelerator) -> LayoutCost:
    """Place every actor on GPUs, give each its share of the iteration's work, and time the iteration."""
    devices: list[Device] = []
    cpu_roles: list[str] = []
    peak = unit.model_flops * UTILISATION
    lc = cfg.learner
    hybrid = layout.kind == "hybrid"
    n_samplers = layout.learner_ranks if hybrid else layout.rollout_actors
    learner_devices = []
    for r in range(layout.learner_ranks):
        role = f"{'hybrid worker' if hybrid else 'learner rank'} {r}"
        if layout.learner_gpus > 0:
            learner_devices.append(_place(devices, min(layout.learner_gpus, 1.0), role, spread=False))
        else:
            cpu_roles.append(role)
    sampler_devices = list(learner_devices) if hybrid else []
    if not hybrid:
        per = -(-layout.rollout_actors // max(1, layout.learner_ranks))
        for a in range(layout.rollout_actors):
            role = f"rollout actor {a}"
            if layout.rollout_gpus <= 0:
                cpu_roles.append(role)
                continue
            if layout.colocate and learner_devices:  # the learner rank's bundle holds its rollout actors
                device = learner_devices[min(a // per, len(learner_devices) - 1)]
                device.roles.append(role)
            else:
                device = _place(devices, min(layout.rollout_gpus, 1.0), role, spread=False)
            sampler_devices.append(device)
    cursor = 0
    reward_devices: dict[str, list[Device]] = {}
    for name, actors, share in layout.rewards:
        for a in range(actors):
            if share <= 0:
                cpu_roles.append(f"{name} reward actor {a}")
                continue
            device = _place(devices, share, f"{name} reward actor {a}", spread=True, start=cursor)
            cursor = (device.index + 1) % max(1, len(devices))
            reward_devices.setdefault(name, []).append(device)

    # sampling: each sampler's groups
    per_group_sample = counts.sampling_rows * unit.sample_row / peak
    per_group_decode = counts.images * unit.decode_image / peak
    sampler_groups = _split_evenly(counts.groups, max(1, n_samplers))
    for device, groups in zip(sampler_devices, sampler_groups, strict=False):
        device.add("sampling", groups * per_group_sample)
        device.add("VAE decode", groups * per_group_decode)
    # rewards: each scorer's images, evenly over its GPU actors
    for name, placed in reward_devices.items():
        images = counts.groups * counts.images
        for device, share in zip(placed, _split_evenly(images, len(placed)), strict=True):
            device.add("rewards", share * unit.reward_image[name] / (unit.reward_peak[name] * UTILISATION))
    # learning: each rank's groups
    ranks = layout.learner_ranks
    span = max(1, len(devices))
    link = accelerator.nvlink_bytes if span <= GPUS_PER_NODE else accelerator.network_bytes
    for device, groups in zip(learner_devices, _split_evenly(counts.groups, ranks), strict=True):
        items = groups * counts.items
        rows = items * counts.rows_per_item
        device.add("learner", rows * (unit.train_row + counts.frozen_passes * unit.frozen_row) / peak)
        device.add("gradient reduce", _reduce_seconds(lc, ranks, items, unit.gradient_bytes, link))
    # weight sync (split): learner rank 0 and every rollout device
    sync = 0.0
    if not hybrid and sampler_devices:
        if layout.sync_backend == "collective":
            sync = unit.trainable_bytes / (link * LINK_UTILISATION)
        else:  # device -> host object store -> device (the network in between when nodes differ)
            sync = 2 * unit.trainable_bytes / (accelerator.pcie_bytes * LINK_UTILISATION)
        for device in {id(d): d for d in [*learner_devices[:1], *sampler_devices]}.values():
            device.add("weight sync", sync)

    phases = {
        "sampling": max((d.phase(SAMPLING) for d in devices), default=0.0),
        "training": max((d.phase(TRAINING) for d in devices), default=0.0),
        "weight sync": sync,
    }
    iteration = sum(phases.values())
    if layout.async_mode and not hybrid:
        iteration = max(
            phases["sampling"], phases["training"] + sync, max((d.busy for d in devices), default=0.0)
        )
    return LayoutCost(layout, devices, iteration, phases, cpu_roles)


def _reduce_seconds(lc, ranks: int, items: int, gradient_bytes: float, link: float) -> float:
    """ZeRO's gradient collectives on one rank (fp32): stages 0-1 all-reduce every gradient once per
    optimizer step (2 (N - 1) / N of the bytes each way); stage 2 reduce-scatters them after every
    micro-batch's backward ((N - 1) / N), without overlap (learner/engine.py leaves overlap_comm off);
    stage 3 also all-gathers the weights for each forward and backward (counted with the gradients)."""
    if ranks <= 1:
        return 0.0
    ring = (ranks - 1) / ranks * gradient_bytes / (link * LINK_UTILISATION)
    if lc.zero_stage <= 1:
        return 2 * ring * lc.optimizer_steps_per_iteration * lc.num_inner_epochs
    micro_batches = math.ceil(items / lc.micro_batch_size)
    return micro_batches * ring * (1 if lc.zero_stage == 2 else 2)


# ----------------------------------------------------------------------------- the other layout


def alternative(cfg, layout: Layout, cost_of) -> tuple[Layout, str]:
    """The other layout on the same GPUs. For a hybrid config: the split of its worker GPUs into rollout and
    learner GPUs that gives the shortest iteration (collective sync, synchronous). For a split config: one
    hybrid worker on each GPU its rollout actors and learner ranks are placed on, with the larger of their
    shares (the reward actors as they are)."""
    if layout.kind == "hybrid":
        n = layout.learner_ranks
        best = None
        for rollouts in range(1, n):
            candidate = replace(
                layout,
                kind="split",
                rollout_actors=rollouts,
                rollout_gpus=layout.learner_gpus,
                learner_ranks=n - rollouts,
                sync_backend="collective",
            )
            seconds = cost_of(candidate).iteration
            if best is None or seconds < best[0]:
                best = (seconds, candidate)
        if best is None:
            return replace(
                layout, kind="split", rollout_actors=1, rollout_gpus=layout.learner_gpus, learner_ranks=1
            ), "split needs two GPUs or more"
        return best[1], f"the best split of the same {n} worker GPUs into rollout and learner GPUs"
    held = [d for d in cost_of(layout).devices if any(r.startswith(("rollout", "learner")) for r in d.roles)]
    workers = max(1, len(held))
    share = min(1.0, max(layout.learner_gpus, 0.0 if layout.colocate else layout.rollout_gpus))
    other = replace(layout, kind="hybrid", rollout_actors=workers, rollout_gpus=0.0, learner_ranks=workers,
                    learner_gpus=share, colocate=False, async_mode=False)  # fmt: skip
    return other, f"one hybrid worker on each of the {workers} GPUs its rollout actors and learner ranks hold"


# ----------------------------------------------------------------------------- report


@dataclass
class CostReport:
    accelerator: Accelerator
    counts: Counts
    unit: UnitCosts
    chosen: LayoutCost
    other: LayoutCost
    other_why: str
    checkpointing: bool

    def lines(self) -> list[str]:
        a, c, u = self.accelerator, self.counts, self.unit
        tflop = 1e12
        out = [
            f"cost model (estimate; {a.name}: {a.flops['bfloat16'] / tflop:.0f} TFLOP/s bf16 dense, "
            f"{a.flops['float32'] / tflop:.0f} fp32, NVLink {a.nvlink_bytes / 1e9:.0f} GB/s, PCIe "
            f"{a.pcie_bytes / 1e9:.0f} GB/s, network {a.network_bytes / 1e9:.0f} GB/s; assumed utilisation "
            f"{UTILISATION:.2f} of peak FLOP/s, {LINK_UTILISATION:.2f} of link bandwidth):"
        ]
        rewards = ", ".join(f"{k} {v / tflop:.2f}" for k, v in u.reward_image.items())
        out.append(
            f"    TFLOP: transformer row {u.sample_row / tflop:.2f} (inference), {u.train_row / tflop:.2f} "
            f"(training: forward + backward{' + recompute' if self.checkpointing else ''}); VAE decode "
            f"{u.decode_image / tflop:.2f} per image; rewards per image: {rewards or 'none'}"
        )
        frozen = (
            f" + {c.frozen_passes} forward(s) without gradients ({', '.join(c.frozen_what)})"
            if c.frozen_passes
            else ""
        )
        out.append(
            f"    per iteration: {c.groups} groups x ({c.sampling_rows} sampling rows = NFE {c.nfe} x "
            f"{c.sampling_rows // max(1, c.nfe)} CFG; {c.images} images decoded and scored; {c.items} learner "
            f"items x {c.rows_per_item:.3g} rows{frozen})"
        )
        out += [f"    note: {n}" for n in u.notes]
        out += _table("this config", self.chosen)
        out += _table(f"for comparison, {self.other_why}", self.other)
        return out


def _table(title: str, cost: LayoutCost) -> list[str]:
    it = cost.iteration
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in cost.phases.items() if v)
    out = [
        f"cost {cost.layout.describe()} ({title}): iteration {it:.1f} s ({phases}); "
        f"busy share min {100 * cost.min_share:.0f}%"
    ]
    out.append("    | GPUs | on them | " + " | ".join(COMPONENTS) + " | busy | busy share |")
    for indices, device in grouped_devices(cost.devices):
        span = f"{indices[0]}" if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"
        roles = ", ".join(role_kinds(device.roles))
        cells = " | ".join(f"{device.seconds.get(k, 0.0):.1f}" for k in COMPONENTS)
        out.append(
            f"    | {span} | {roles} | {cells} | {device.busy:.1f} s | {100 * device.busy / it:.0f}% |"
        )
    if cost.cpu_roles:
        out.append(f"    on CPU (not counted): {', '.join(role_kinds(cost.cpu_roles))}")
    return out


def role_kinds(roles: Sequence[str]) -> list[str]:
    """'hybrid worker 3', 'geneval reward actor 1' -> 'hybrid worker', 'geneval reward actor' (with counts)."""
    kinds: dict[str, int] = {}
    for role in roles:
        kind = role.rsplit(" ", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return [f"{n} x {k}" if n > 1 else k for k, n in kinds.items()]


def grouped_devices(devices: Sequence[Device]) -> list[tuple[list[int], Device]]:
    """Consecutive devices with the same kinds of actors and the same seconds, as one row."""
    rows: list[tuple[list[int], Device]] = []
    for d in devices:
        key = (tuple(role_kinds(d.roles)), tuple(round(d.seconds.get(k, 0.0), 3) for k in COMPONENTS))
        if rows and rows[-1][0][-1] == d.index - 1 and _key(rows[-1][1]) == key:
            rows[-1][0].append(d.index)
        else:
            rows.append(([d.index], d))
    return rows


def _key(d: Device):
    return (tuple(role_kinds(d.roles)), tuple(round(d.seconds.get(k, 0.0), 3) for k in COMPONENTS))


def vae_config_of(folder: Path | None) -> dict | None:
    """A local pipeline folder's vae/config.json (None: the published layout)."""
    if folder is None or not (folder / "vae" / "config.json").is_file():
        return None
    conf = json.loads((folder / "vae" / "config.json").read_text())
    if "block_out_channels" not in conf:  # AutoencoderKLQwenImage: base_dim x dim_mult, counted as 2-D convs of one frame
        conf = {"block_out_channels": [conf["base_dim"] * m for m in conf["dim_mult"]], "layers_per_block": conf["num_res_blocks"]}
    return {
        "block_out_channels": conf["block_out_channels"],
        "layers_per_block": conf.get("layers_per_block", 2),
        "mid_block_add_attention": conf.get("mid_block_add_attention", True),
    }


def estimate(
    cfg, spec: PipelineSpec, reward_weights: Sequence[Sequence[str]], *, vae_config: dict | None = None
) -> CostReport | None:
    """The cost report of `cfg` (None when no actor holds a GPU: the model covers GPU layouts)."""
    layout = layout_of(cfg)
    if layout.learner_gpus <= 0 and (layout.kind == "hybrid" or layout.rollout_gpus <= 0):
        return None
    accelerator = accelerator_for(cfg.cluster.gpu_memory_gb)
    counts = iteration_counts(cfg)
    unit = unit_costs(cfg, spec, reward_weights, accelerator, vae_config)

    def cost_of(lay: Layout) -> LayoutCost:
        return layout_cost(cfg, lay, counts, unit, accelerator)

    other, why = alternative(cfg, layout, cost_of)
    return CostReport(
        accelerator, counts, unit, cost_of(layout), cost_of(other), why, cfg.model.gradient_checkpointing
    )


def estimate_for(cfg) -> CostReport | str:
    """`estimate` with the model's spec and the scorers' weights found as the preflight's memory check finds
    them (a local folder, or the published architecture of a hub id); a sentence when there is none."""
    from cluster.preflight import _model_spec, _scorer_weights
    from models.policy import ModelFolderError, resolve_model_path

    spec, source = _model_spec(cfg)
    if spec is None:
        return f"no estimate: {source}"
    try:
        weights = [_scorer_weights(s) for s in cfg.rewards.scorers]
        folder = Path(resolve_model_path(cfg.model.path))
    except (ModelFolderError, OSError, ValueError, KeyError, TypeError) as err:
        return f"no estimate: {err}"
    report = estimate(cfg, spec, weights, vae_config=vae_config_of(folder if folder.is_dir() else None))
    return report if report is not None else "no actor holds a GPU (the model times GPU layouts only)"


def dry_run_lines(cfg) -> list[str]:
    """What `launch.py --dry-run` prints after the preflight: the cost report, or why there is none."""
    report = estimate_for(cfg)
    return report.lines() if isinstance(report, CostReport) else [f"cost model: {report}"]
