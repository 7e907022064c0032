"""The time model: where each actor's work runs (a `Layout`: the GPU shares of cluster.* and
rewards.scorers[*]), how long each GPU works in one iteration, and the other layout on the same GPUs.

Kept apart from the counts (cluster/cost_counts.py) because it is pure placement and arithmetic over them:
nothing here reads a file or runs a sampler.

Iteration time is the slowest device's critical path. split: rollout GPUs sample while learner GPUs wait,
then the learners train while the rollout GPUs wait, then the weights sync (async: sampling of the next
iteration overlaps training). hybrid: every worker samples its groups, then trains its share. Reward actors
score while sampling runs, on the GPUs they are placed on. A device's busy share = its busy seconds /
the iteration's seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cluster.cost_counts import GPUS_PER_NODE, LINK_UTILISATION, UTILISATION, Accelerator, Counts, UnitCosts

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
