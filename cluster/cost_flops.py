"""FLOPs of one unit of each kind of work the cost model (cluster/cost_model.py) counts: one transformer row
(forward, and forward + backward for training), one VAE decode, one scored image.

Kept apart from the config-reading parts (cluster/cost_counts.py) because these are closed forms over
architectures alone (module lists, VAE and CLIP configs), checked against torch's FlopCounterMode
(tests/test_cost_model.py) and against measured CPU seconds (benchmarks/cost_calibration.py).

Transformer FLOPs per row: 2 x (each weight matrix x the tokens it sees) + 4 x tokens_q x tokens_kv x width
per attention (QK^T and AV). In an MMDiT (SD3, FLUX) the adaLN modulation and timestep embeddings see one
vector per row, a dual-stream block's image weights see the image tokens and its context weights the text
tokens, and a single-stream block sees both: counted that way the sum agrees with torch's FlopCounterMode
(tests/test_cost_model.py), where 2 x params x tokens would count SD3.5-Medium twice over. Backward: the
input gradients of every matmul (1x its forward) and of attention (2x: dS, then dQ, dK, dV), plus the weight
gradients of the trained matmuls (1x; for LoRA only the adapters'); so full fine-tuning's backward is 2x
its forward and LoRA's about 1x. The module lists of the published transformers are in
cluster/cost_linears.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.model_specs import count_params, safetensors_shapes

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
    cluster/preflight_checks.py `scorer_weights` lists them); a programmatic scorer (no weights) costs nothing
    on a GPU."""
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
