"""What one iteration computes and what one unit of each kind of work costs, from the config: the GPU it runs
on (`Accelerator`), the per-group counts the algorithm unit's own sampler and the learner's plan give
(`Counts`), and the FLOPs and bytes of each unit (`UnitCosts`).

The bridge between the config and the closed forms (cluster/cost_flops.py): it runs the unit's sampler on
2 x 2 latents and asks the unit, the family and the memory planner (cluster/memory_plan.py) for their
terms, so the time model (cluster/cost_layouts.py) sees numbers only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cluster.cost_flops import (
    PUBLISHED_VAE,
    TransformerCounts,
    forward_parts,
    lora_counts,
    reward_flops,
    train_flops,
    transformer_counts,
    vae_decode_flops,
)
from cluster.cost_linears import spec_linears
from cluster.memory_plan import DTYPE_BYTES, PRECISION_BYTES, images_per_group, learner_inputs_per_micro_batch
from cluster.model_specs import PipelineSpec, image_tokens, text_tokens
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
    image, text = image_tokens(spec, m.resolution, m.num_frames), text_tokens(spec, m.max_sequence_length)
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
        decode_image=decode * m.num_frames,  # a video: its frames (2-D decoder FLOPs per frame, a rough count)
        reward_image=rewards,
        trainable_bytes=synced,
        gradient_bytes=4.0 * trainable,
        model_flops=accelerator.flops[m.dtype],
        reward_peak=peaks,
        notes=tuple(notes),
    )
