"""A learner rank: recomputes log-probs of stored transitions under the current policy and applies the
registered GRPO loss through a DeepSpeed engine.

A plain class (cluster/actors.py wraps it as a Ray actor). Ranks form one data-parallel group: rank 0
publishes an address and port (`rendezvous`), every rank calls `setup`, then each `train` call gets
that rank's share of the iteration's groups. Every rank makes the same number of backward calls per
optimizer step (ranks short of data add zero-weight micro-batches) so ZeRO's reductions line up.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from algorithms import Algorithm, default_algorithm
from algorithms.losses import Diagnostics, DiagnosticSums, pooled_mean_std
from common.actor_metrics import describe, report_process
from common.collective import SyncGroup
from common.data_plane import fetch_groups
from common.durable import CheckpointError
from common.memory import peak_memory_gb
from common.net import bind_address, free_port
from common.offload import Offloader
from common.storage import check_sentinel
from common.weight_buckets import (
    BUCKET_BYTES,
    BucketSpec,
    pack,
    plan_for,
    sync_digest,
    to_packed,
    weights_digest,
)
from learner.checkpoint import load_into_optimizer, load_optimizer_state, save_optimizer_state, save_tensors
from learner.config import LearnerConfig
from learner.engine import (
    DistInfo,
    StepOutcome,
    build_engine,
    init_distributed,
    micro_batch_step,
    optimizer_state_tensors,
    scheduled_learning_rate,
    set_learning_rate,
    set_micro_batches,
)
from learner.forward_process import ForwardProcessPlan
from learner.per_step import PerStepPlan
from learner.zero3 import gathered, gathered_state_dict
from models.config import ModelConfig, SamplingConfig
from models.devices import resolve_device
from models.policy import PRECISION_DTYPES, Policy
from models.seeding import derive_seed
from models.types import Rollout


@dataclass
class TrainGroup:
    """One sampled prompt group with the advantages of its trained samples."""

    prompt: str
    rollout: Rollout
    advantages: torch.Tensor  # [num_samples] float32
    keep: torch.Tensor  # [num_samples] bool: samples to train on (False: e.g. a zero-std group)
    policy_version: int
    group_index: int = 0  # the group's index within its iteration: seeds the forward-process draws
    bulk: Any = None  # ObjectRef of the rollout's tensors (common/data_plane.py), fetched by the rank; None: in `rollout`


def split_minibatches(rows: list[tuple[int, int, int]], num_minibatches: int, generator: torch.Generator):
    """Shuffle the samples and split them into minibatches; a sample's transitions stay together."""
    samples = sorted({(g, s) for g, s, _ in rows})
    order = torch.randperm(len(samples), generator=generator).tolist()
    chunks = [sorted(samples[i] for i in order[m::num_minibatches]) for m in range(num_minibatches)]
    by_sample = defaultdict(list)
    for g, s, j in rows:
        by_sample[(g, s)].append(j)
    return [[(g, s, j) for g, s in chunk for j in by_sample[(g, s)]] for chunk in chunks]


def split_by_step(groups: list[TrainGroup], rows: list[tuple[int, int, int]], num_steps: int):
    """One minibatch per sampling step index 0..num_steps-1 (empty where nothing was trained at that step),
    the same count on every rank: G2RPO's earlier train_g2rpo_hps_clip.py takes one optimizer step per
    branch step k, over that k's G branches."""
    by_step: list[list[tuple[int, int, int]]] = [[] for _ in range(num_steps)]
    for g, s, j in rows:
        by_step[int(groups[g].rollout.transitions.step[j])].append((g, s, j))
    return by_step


# learner.optimizer_step_per -> the minibatches of one epoch, one optimizer step each.
MINIBATCH_SPLITS = {
    "minibatch": lambda w, groups, rows, gen: split_minibatches(rows, w.cfg.optimizer_steps_per_iteration, gen),
    "denoising_step": lambda w, groups, rows, gen: split_by_step(groups, rows, w.sampling.num_steps),
}


def ema_decay_at(step: int, decay: float) -> float:
    """Flow-GRPO's EMA decay at optimizer step t (flow_grpo/ema.py, get_current_decay): a warm-up
    min((1 + t) / (10 + t), decay), so the average does not drag the first evaluations back to the base."""
    return min((1 + step) / (10 + step), decay)


class EmaWeights:
    """Exponential moving average of the trainable weights (float32 numpy, so it never touches the
    engine's parameters), as flow_grpo/ema.py keeps it: after optimizer step t (the count of steps
    taken), if (t + 1) % every == 0, ema += (1 - ema_decay_at(t, decay)) * (w - ema)."""

    def __init__(self, state: dict[str, np.ndarray], decay: float, every: int = 1):
        self.decay, self.every = decay, every
        self.state = {k: v.astype(np.float32, copy=True) for k, v in state.items()}

    def update(self, state: dict[str, np.ndarray], step: int) -> None:
        if (step + 1) % self.every:
            return
        keep = ema_decay_at(step, self.decay)
        for k, v in state.items():
            self.state[k] *= keep
            self.state[k] += (1.0 - keep) * v.astype(np.float32)


# The learner side of each algorithm family, by the unit's `learner_plan`: how a rank builds and feeds its
# micro-batches (learner/per_step.py, learner/forward_process.py).
PLANS = {"per_step": PerStepPlan, "forward_process": ForwardProcessPlan}


class PolicyDiverged(RuntimeError):
    """learner.max_consecutive_skips optimizer steps in a row had a non-finite gradient: the run cannot go
    on, and benchmarks that compare runs (compare.py) record it as diverged instead of stopping. Ray raises
    it on the driver as an instance of this class too (RayTaskError subclasses its cause)."""


class LearnerWorker:
    """One data-parallel learner rank holding the trainable policy inside a DeepSpeed engine."""

    role = "learner"  # its actor's name prefix (cluster/actors.py) and its role in the dashboard

    def __init__(
        self,
        model: ModelConfig,
        sampling: SamplingConfig,
        learner: LearnerConfig,
        *,
        algorithm: Algorithm | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: str = "cpu",
        torch_threads: int | None = None,
        iterations: int | None = None,
    ):
        if torch_threads:
            torch.set_num_threads(torch_threads)  # Ray sets OMP_NUM_THREADS=1 in actors
        self.model_cfg, self.sampling, self.cfg = model, sampling, learner
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.iterations = iterations  # the run's length: learner.lr_schedule's horizon (needed unless constant)
        self.device = resolve_device(device, f"learner-{rank}")
        self.policy: Policy | None = None
        self.engine = None
        self.sync_group: SyncGroup | None = None
        self.sync_bucket_bytes = BUCKET_BYTES  # the rollout actors' must be equal (collective backend)
        self.ema: EmaWeights | None = None
        self.algorithm = algorithm if algorithm is not None else default_algorithm()
        self.plan = PLANS[self.algorithm.learner_plan](self)
        self.version = 0
        self._consecutive_skips = 0  # optimizer steps skipped in a row for a non-finite gradient
        self._received: list[TrainGroup] = []  # groups `receive` fetched for the next `train`
        self._offloader: Offloader | None = None  # cluster.colocate_offload: made by the first `offload`
        report_process(self.role, f"{self.role}-{rank}", lambda: self.version)

    def __repr__(self) -> str:
        """The Ray dashboard's Repr column and log prefix (common/actor_metrics.py)."""
        return describe(type(self).__name__, self.role, f"{self.role}-{self.rank}", policy_version=self.version)

    # -- group setup

    def rendezvous(self, spans_nodes: bool = False) -> tuple[str, int]:
        """The address and a free port rank 0 serves the learner group or the sync group on: loopback
        unless the run's actors span several nodes (common/net.py `bind_address`)."""
        host = bind_address(spans_nodes)
        return host, free_port(host)

    def setup(self, master_addr: str, master_port: int) -> str:
        init_distributed(
            DistInfo(self.rank, self.world_size, master_addr, master_port, local_rank=self.device.index or 0), self.device
        )  # fmt: skip
        # The LoRA init is random: seed it so every rank, and every rerun of a config, starts alike.
        torch.manual_seed(derive_seed(self.seed, "init"))
        self.policy = self.load_policy()
        self.policy.transformer.train()
        self.engine = build_engine(
            self.policy.transformer, self.policy.trainable_parameters(), self.cfg, self.world_size
        )
        self.ema = (
            EmaWeights(self.export_weights(), self.cfg.ema_decay, self.cfg.ema_update_every)
            if self.cfg.ema_decay
            else None
        )
        self.plan.setup()
        return f"learner-{self.rank}"

    def load_policy(self) -> Policy:
        """Only the transformer: prompts arrive encoded with their groups (common/data_plane.py), so the
        text encoders (SD3.5's T5-XXL alone: 9.5 GB in bf16) and the VAE are never loaded here (a hybrid
        worker, cluster/hybrid.py, loads the whole pipeline)."""
        return Policy.from_config(
            self.model_cfg, device=self.device, transformer_only=True,
            trainable_dtype=PRECISION_DTYPES[self.cfg.precision], reference_copy=self.algorithm.needs_reference(self.cfg),
        )  # fmt: skip

    # -- the update

    def _agree_on_micro_batches(self, count: int) -> int:
        """The most micro-batches any rank has for this optimizer step (every rank runs that many)."""
        import torch.distributed as dist

        t = torch.tensor([count], dtype=torch.long, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def receive(self, groups: list[TrainGroup]) -> list[int]:
        """Fetch this rank's groups' rollout tensors from the object store (common/data_plane.py) for the
        next `train(None, ...)`, before any rank enters a collective; returns the indices of groups whose
        tensors were lost (the driver resamples them and calls again)."""
        self._received, lost = fetch_groups(groups)
        return lost

    def train(self, groups: list[TrainGroup] | None, iteration: int) -> dict[str, float]:
        """One iteration's update on this rank's groups (None: those `receive` fetched):
        num_inner_epochs x optimizer_steps_per_iteration optimizer steps. Returns averaged diagnostics."""
        if self.engine is None:
            raise RuntimeError("LearnerWorker.setup() must run before train()")
        self.reload()
        start = time.perf_counter()
        if groups is None:
            groups, self._received = self._received, []
        groups, lost = fetch_groups(groups)
        if lost:
            raise RuntimeError(f"rollout tensors of groups {lost} were lost with their rollout actor")
        self.plan.begin(groups, iteration)
        lr = scheduled_learning_rate(self.cfg, iteration, self.iterations)
        set_learning_rate(self.engine, lr)
        rows = self.plan.rows(groups)
        groups = self.plan.prepare(groups, rows)
        # The loss's diagnostics stay device tensors until the iteration ends: reading one per micro-batch
        # would make the host wait for the device before every backward (algorithms/losses.py).
        diagnostics = DiagnosticSums()
        first: list[tuple[int, Diagnostics]] = []  # (transitions, diagnostics) of the first minibatch
        sums: dict[str, float] = defaultdict(float)  # the optimizer's (host numbers already)
        counts: dict[str, float] = defaultdict(float)
        steps = skipped = 0
        staleness = [self.version - g.policy_version for g in groups]
        for epoch in range(self.cfg.num_inner_epochs):
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "minibatches", iteration, epoch, self.rank))
            for minibatch in MINIBATCH_SPLITS[self.cfg.optimizer_step_per](self, groups, rows, gen):
                mbs = self.plan.micro_batches(groups, minibatch)
                total = self._agree_on_micro_batches(len(mbs))
                if total == 0:
                    continue
                mbs += [self.plan.padding(mbs)] * (total - len(mbs))
                set_micro_batches(self.engine, total)
                for i, mb in enumerate(mbs):
                    loss, diag = self.plan.loss(mb)
                    outcome = micro_batch_step(self.engine, loss * mb.weight, is_last=i == total - 1)
                    if outcome is not None:
                        skipped += self._count_skip(outcome, iteration)
                        if outcome.grad_norm is not None and outcome.applied:
                            sums["learner/grad_norm"] += outcome.grad_norm
                            counts["learner/grad_norm"] += 1
                    if mb.weight:
                        diagnostics.add(diag, len(mb))
                        if steps == 0 and "policy/ratio_mean" in diag.scalars:
                            first.append((len(mb), diag))
                steps += 1
                if self.ema is not None:
                    self.ema.update(self.export_weights(), self.engine.global_steps)
        self.plan.end()
        if steps:
            self.version += 1
        metrics = {k: sums[k] / counts[k] for k in sums}
        metrics.update(diagnostics.means())  # the iteration's one read of them (`first`'s included)
        if first:
            # Before the first optimizer step the policy is the sampler's: ratio mean 1, std 0 and nothing
            # clipped, up to numerics (flow_grpo's FAQ asks users to check exactly this).
            ratios = [(n, d["policy/ratio_mean"], d["policy/ratio_std"]) for n, d in first]
            mean, std = pooled_mean_std(ratios)
            metrics["learner/first_minibatch_ratio_mean"], metrics["learner/first_minibatch_ratio_std"] = mean, std
            clipped = sum(d["policy/clipfrac"] * n for n, d in first)
            metrics["learner/first_minibatch_clipfrac"] = clipped / sum(n for n, _ in first)
        if self.cfg.zero_stage != 3:  # ZeRO-3 ranks hold only partitions of the weights
            # The trained weights' size (LoRA: the adapters'): a policy that random-walks grows like the
            # square root of its steps, one that learns something grows with them.
            metrics["learner/weight_norm"] = float(torch.linalg.vector_norm(
                torch.stack([p.detach().float().norm() for p in self.engine.module.parameters() if p.requires_grad])))
        metrics.update({
            "learner/optimizer_steps": float(steps),
            "learner/skipped_steps": float(skipped),
            "learner/lr": lr,
            "learner/transitions": float(len(rows)),
            "learner/seconds": time.perf_counter() - start,
            "learner/staleness_max": float(max(staleness, default=0)),
            "learner/staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
        })  # fmt: skip
        return metrics

    def _count_skip(self, outcome: StepOutcome, iteration: int) -> int:
        """1 if the optimizer step was skipped for a non-finite gradient (else 0); raises once
        learner.max_consecutive_skips steps in a row were. Every rank sees the same outcome (the norm is
        global), so every rank raises at the same step."""
        if outcome.applied:
            self._consecutive_skips = 0
            return 0
        self._consecutive_skips += 1
        if self._consecutive_skips >= self.cfg.max_consecutive_skips:
            raise PolicyDiverged(
                f"iteration {iteration}: the gradient norm was not finite ({outcome.grad_norm}) for "
                f"{self._consecutive_skips} optimizer steps in a row (learner.max_consecutive_skips): the policy "
                "diverged. Those steps were skipped, so the weights hold no NaN; look at learner/grad_norm and "
                "policy/loss in metrics.jsonl for where it began, lower learner.learning_rate (or decay it, "
                "learner.lr_schedule), and restart from a checkpoint before that."
            )
        return 1

    # -- weights and checkpoints

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights as CPU tensors in their own dtype. Under ZeRO-3 this gathers the
        partitioned parameters, a collective: every rank must call it (the driver calls every rank,
        cluster/weight_sync.py), and only rank 0 gets the weights (the others get {})."""
        if self.cfg.zero_stage != 3:
            return self.policy.export_trainable()
        gathered = gathered_state_dict(
            self.policy.transformer, trainable_only=self.model_cfg.lora.enabled, keep=self.rank == 0
        )
        return self.policy.export_trainable(state_dict=gathered) if self.rank == 0 else {}

    def export_weights(self, ema: bool = False) -> dict[str, np.ndarray]:
        """The trainable weights as numpy arrays (what weight sync sends); `ema=True` gives the EMA copy
        kept for evaluation (learner.ema_decay). Under ZeRO-3 every rank must call it (see
        `_trainable_state`)."""
        if ema:
            if self.ema is None:
                raise ValueError("export_weights(ema=True) needs learner.ema_decay to be set")
            return {k: v.copy() for k, v in self.ema.state.items()}
        state = self._trainable_state()
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}

    def export_sampling_weights(self) -> dict[str, np.ndarray]:
        """The weights the rollout actors sample with, as numpy (tests and debugging; weight sync sends
        `_sampling_buckets`): the trained weights, or the forward-process family's EMA sampling policy
        (algorithm.old_policy 'ema')."""
        source = self.plan.sampling_source()
        return self.export_weights() if source is None else {k: v.detach().cpu().numpy().copy() for k, v in source.items()}

    def _sampling_buckets(self, device: torch.device | str) -> Iterator[tuple[BucketSpec, torch.Tensor | None]]:
        """The sampling weights bucket by bucket, in the policy's own dtypes (common/weight_buckets.py),
        packed on `device`. Every rank iterates: under ZeRO-3 each bucket's parameters are gathered (a
        collective every rank enters) and released before the next, and only rank 0 packs (the others
        get None), so no rank holds more than one bucket beyond its shard."""
        live = self.policy.trainable_tensors()
        held = self.plan.sampling_source()  # an EMA sampling policy held beside the trained weights, or None
        for spec in plan_for(live, self.sync_bucket_bytes):
            if held is not None:
                flat = pack(spec, held, device) if self.rank == 0 else None
            else:
                with gathered([live[n] for n in spec.names]) if self.cfg.zero_stage == 3 else nullcontext():
                    flat = pack(spec, live, device) if self.rank == 0 else None
            yield spec, flat

    def export_sampling_buckets(self) -> tuple[list, str]:
        """Weight sync through the object store: each packed bucket goes into Ray's object store as soon
        as it is packed (no fp32 widening, one bucket in this process at a time). Rank 0 returns the
        buckets' ObjectRefs (the buckets themselves without Ray) and the sync digest; other ranks take
        part in the ZeRO-3 gathers and return ([], "")."""
        import ray

        out, specs, sums = [], [], []
        for spec, flat in self._sampling_buckets("cpu"):
            if flat is None:
                continue
            bucket = to_packed(spec, flat)
            out.append(ray.put(bucket) if ray.is_initialized() else bucket)
            specs.append(spec)
            sums.append(bucket.checksum)
        return out, sync_digest(specs, sums) if self.rank == 0 else ""

    def get_version(self) -> int:
        return self.version

    # -- colocation (cluster.colocate_offload, common/offload.py)

    def offload(self) -> int:
        """While the colocated rollout actors sample: free everything but the trainable weights (the weight
        sync reads those next; LoRA adapters, or a fully fine-tuned transformer): the frozen networks (the
        base transformer under LoRA, the reference copy), the optimizer state and the
        gradients. Returns the bytes freed; `train` and the checkpoint calls reload first."""
        if self._offloader is None:
            self._offloader = Offloader(self.device, f"learner-{self.rank}")
        trainable = self.policy.trainable_parameters()
        grads = [p.grad for p in trainable if p.grad is not None]
        return self._offloader.offload([*self.policy.tensors(), *optimizer_state_tensors(self.engine), *grads],
                                       keep=trainable)

    def reload(self) -> int:
        """Bring back what `offload` freed, bit for bit; returns the bytes (0: nothing was offloaded)."""
        return self._offloader.reload() if self._offloader is not None else 0

    def peak_memory(self) -> dict[str, float]:
        return peak_memory_gb(self.device)

    def check_storage(self, path: str, token: str) -> str:
        """Check that the driver's storage sentinel is visible here (common/storage.py); returns this
        rank's Ray node id."""
        import ray

        check_sentinel(path, token, f"learner-{self.rank}")
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"

    def pid(self) -> int:
        """This worker's process id (fault-injection tests kill it)."""
        import os

        return os.getpid()

    def weights_digest(self) -> str:
        """Digest of `export_sampling_weights`, what every rollout actor must hold after a sync (every rank
        must call it under ZeRO-3; "" off rank 0)."""
        state = self.export_sampling_weights()
        return weights_digest({k: torch.from_numpy(v) for k, v in state.items()}) if state else ""

    def join_sync_group(self, master_addr: str, master_port: int, world_size: int) -> str:
        """Rank 0 of the weight-broadcast group (only learner rank 0 calls this); a group this rank
        belonged to before (a rollout actor restarted) is closed first."""
        if self.sync_group is not None:
            self.sync_group.close()
        self.sync_group = SyncGroup(master_addr, master_port, 0, world_size, self.device)
        return f"learner-{self.rank}"

    def broadcast_weights(self) -> dict:
        """Send the sampling weights to every rollout actor of the sync group, bucket by bucket straight
        from the engine's parameters (no object-store export); returns the seconds spent and the sync
        digest. Under ZeRO-3 every rank calls this to take part in the gathers; only rank 0 sends."""
        start = time.perf_counter()
        group = self.sync_group
        specs, sums = plan_for(self.policy.trainable_tensors(), self.sync_bucket_bytes), []
        if group is not None:
            group.send_plan(specs)
        for spec, flat in self._sampling_buckets(group.device if group is not None else "cpu"):
            if flat is not None and group is not None:
                sums.append(group.send_bucket(spec, flat))
        digest = sync_digest(specs, sums) if group is not None else ""
        return {"seconds": time.perf_counter() - start, "digest": digest}

    def save_checkpoint(self, directory: str) -> dict[str, dict]:
        """This rank's optimizer state (and, on rank 0, the trainable weights) into `directory`, each file
        fsynced; returns {file name: size and sha256} for the checkpoint's manifest. A failed write (a
        full disk) raises CheckpointError naming this rank, the file and the cause."""
        self.reload()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        weights = self._trainable_state()  # every rank: a collective under ZeRO-3
        files: dict[str, dict] = {}
        try:
            if self.rank == 0:  # the weights in their own dtype: no fp32 copy of bf16
                files["trainable.safetensors"] = save_tensors(path / "trainable.safetensors", weights)
                held = {"ema.safetensors": self.ema.state if self.ema is not None else None,
                        "old_policy.safetensors": self.plan.state()}
                for name, state in held.items():
                    if state is not None:
                        files[name] = save_tensors(path / name, {k: torch.from_numpy(v) for k, v in state.items()})
            files.update(save_optimizer_state(
                self.engine.optimizer.state_dict(), path / f"optimizer_rank{self.rank}",
                extra={"global_steps": self.engine.global_steps, "version": self.version},
            ))  # fmt: skip
        except CheckpointError as err:
            raise CheckpointError(f"learner-{self.rank}: {err}") from None
        return files

    def load_checkpoint(self, directory: str) -> int:
        """Restore weights and optimizer state written by `save_checkpoint`; returns the policy version."""
        from safetensors.torch import load_file

        self.reload()
        path = Path(directory)
        weights = path / "trainable.safetensors"
        try:
            if self.cfg.zero_stage == 3:
                # Partitioned parameters are restored from the optimizer's fp32 partitions below; the
                # weights file is only checked against this policy's trainable names.
                self.policy.check_trainable_names(load_file(weights).keys())
            else:
                self.policy.load_trainable(load_file(weights))
        except (KeyError, RuntimeError, OSError) as err:  # wrong keys, shapes (another LoRA rank), or a damaged file
            raise ValueError(f"checkpoint {weights} does not fit this policy (model.lora settings?): {err}") from None
        if self.ema is not None:
            ema_file = path / "ema.safetensors"
            if not ema_file.is_file():
                raise FileNotFoundError(f"learner.ema_decay is set but checkpoint {path} has no {ema_file.name}")
            self.ema.state = {k: v.numpy() for k, v in load_file(ema_file).items()}
        if self.plan.state() is not None:
            old_file = path / "old_policy.safetensors"
            if not old_file.is_file():
                raise FileNotFoundError(f"algorithm.old_policy is 'ema' but checkpoint {path} has no {old_file.name}")
            self.plan.load_state({k: v.numpy() for k, v in load_file(old_file).items()})
        state, extra = load_optimizer_state(path / f"optimizer_rank{self.rank}", live=self.engine.optimizer.state_dict())
        try:
            load_into_optimizer(self.engine.optimizer, state, self.rank, self.world_size)
        except (KeyError, RuntimeError, ValueError) as err:  # another layout: LoRA rank, ZeRO stage, rank count
            raise ValueError(f"optimizer state {path / f'optimizer_rank{self.rank}'} does not fit this run: {err}") from None
        self.engine.global_steps = int(extra["global_steps"])
        self.version = int(extra["version"])
        return self.version
