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

Seconds = FLOPs / (peak x UTILISATION), bytes / (link x LINK_UTILISATION). The per-FLOP times of the
components measured on CPU agree (benchmarks/cost_calibration.py, docs/benchmarks.md), which is what lets
one utilisation stand for all of them; the absolute value (0.4) is an assumption, not a GPU measurement.

The parts, each importing only the ones above it (every public name is also importable from here):
- cluster/cost_flops.py: FLOPs of one transformer row (from its module list), one VAE decode, one scored image;
- cluster/cost_linears.py: the published transformers' module lists, for a dry run with only a hub id;
- cluster/cost_counts.py: the accelerator, what one iteration computes (`Counts`) and each unit's cost
  (`UnitCosts`), read from the config;
- cluster/cost_layouts.py: the time model: actors placed on GPUs, each GPU's seconds, the other layout;
- this module: the report `launch.py --dry-run` prints, and the entry points that find the model's spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.cost_counts import (
    ACCELERATORS,
    GPUS_PER_NODE,
    LINK_UTILISATION,
    UTILISATION,
    Accelerator,
    Counts,
    UnitCosts,
    accelerator_for,
    iteration_counts,
    sample_probe,
    unit_costs,
)
from cluster.cost_flops import (
    PUBLISHED_REWARD_FLOPS,
    PUBLISHED_VAE,
    ROUGH_TOKENS,
    TransformerCounts,
    clip_flops,
    forward_parts,
    lora_counts,
    reward_flops,
    tower_flops,
    train_flops,
    transformer_counts,
    vae_config_of,
    vae_decode_flops,
)
from cluster.cost_layouts import (
    COMPONENTS,
    SAMPLING,
    SYNC,
    TRAINING,
    Device,
    Layout,
    LayoutCost,
    alternative,
    layout_cost,
    layout_of,
)
from cluster.cost_linears import PUBLISHED_LINEARS, expand_linears, spec_linears
from cluster.model_specs import PipelineSpec

__all__ = [
    "ACCELERATORS", "COMPONENTS", "GPUS_PER_NODE", "LINK_UTILISATION", "PUBLISHED_LINEARS", "PUBLISHED_REWARD_FLOPS",
    "PUBLISHED_VAE", "ROUGH_TOKENS", "SAMPLING", "SYNC", "TRAINING", "UTILISATION", "Accelerator", "CostReport",
    "Counts", "Device", "Layout", "LayoutCost", "TransformerCounts", "UnitCosts", "accelerator_for", "alternative",
    "clip_flops", "dry_run_lines", "estimate", "estimate_for", "expand_linears", "forward_parts", "grouped_devices",
    "iteration_counts", "layout_cost", "layout_of", "lora_counts", "reward_flops", "role_kinds", "sample_probe",
    "spec_linears", "tower_flops", "train_flops", "transformer_counts", "unit_costs", "vae_config_of",
    "vae_decode_flops",
]  # fmt: skip


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
    from cluster.preflight_checks import model_spec, scorer_weights
    from models.policy import ModelFolderError, resolve_model_path

    spec, source = model_spec(cfg)
    if spec is None:
        return f"no estimate: {source}"
    try:
        weights = [scorer_weights(s) for s in cfg.rewards.scorers]
        folder = Path(resolve_model_path(cfg.model.path))
    except (ModelFolderError, OSError, ValueError, KeyError, TypeError) as err:
        return f"no estimate: {err}"
    report = estimate(cfg, spec, weights, vae_config=vae_config_of(folder if folder.is_dir() else None))
    return report if report is not None else "no actor holds a GPU (the model times GPU layouts only)"


def dry_run_lines(cfg) -> list[str]:
    """What `launch.py --dry-run` prints after the preflight: the cost report, or why there is none."""
    report = estimate_for(cfg)
    return report.lines() if isinstance(report, CostReport) else [f"cost model: {report}"]
