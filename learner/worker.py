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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.memory import peak_memory_gb
from common.storage import check_sentinel
from learner.checkpoint import load_into_optimizer, load_optimizer_state, save_optimizer_state
from learner.config import LearnerConfig
from learner.engine import DistInfo, build_engine, free_port, init_distributed, node_ip, set_micro_batches
from learner.losses import get_loss
from learner.zero3 import gathered_state_dict
from rollout.collective import SyncGroup
from rollout.config import ModelConfig, SamplingConfig
from rollout.policy import Policy
from rollout.sde import kl_to_reference, sde_step
from rollout.seeding import derive_seed
from rollout.types import Rollout
from rollout.worker import weights_digest


@dataclass
class TrainGroup:
    """One sampled prompt group with the advantages of its trained samples."""

    prompt: str
    rollout: Rollout
    advantages: torch.Tensor  # [num_samples] float32
    keep: torch.Tensor  # [num_samples] bool: samples to train on (False: e.g. a zero-std group)
    policy_version: int


@dataclass
class MicroBatch:
    """Transitions trained in one forward/backward; `inputs` holds each distinct x_t once."""

    inputs: torch.Tensor  # [U, ...]
    input_sigma: torch.Tensor  # [U]
    input_prompt: list[str]  # [U]
    index: torch.Tensor  # [K] row of `inputs` per transition
    next_latents: torch.Tensor  # [K, ...]
    sigma: torch.Tensor  # [K]
    sigma_next: torch.Tensor  # [K]
    old_log_prob: torch.Tensor  # [K]
    advantages: torch.Tensor  # [K]
    weight: float = 1.0  # 0 for padding micro-batches

    def __len__(self) -> int:
        return self.index.shape[0]


def flatten_transitions(groups: list[TrainGroup]) -> list[tuple[int, int, int]]:
    """(group, sample_id, transition) triples of every kept transition, grouped by sample."""
    rows = []
    for gi, group in enumerate(groups):
        t = group.rollout.transitions
        for j in range(len(t)):
            sid = int(t.sample_id[j])
            if bool(group.keep[sid]):
                rows.append((gi, sid, j))
    return rows


def split_minibatches(rows: list[tuple[int, int, int]], num_minibatches: int, generator: torch.Generator):
    """Shuffle the samples and split them into minibatches; a sample's transitions stay together."""
    samples = sorted({(g, s) for g, s, _ in rows})
    order = torch.randperm(len(samples), generator=generator).tolist()
    chunks = [sorted(samples[i] for i in order[m::num_minibatches]) for m in range(num_minibatches)]
    by_sample = defaultdict(list)
    for g, s, j in rows:
        by_sample[(g, s)].append(j)
    return [[(g, s, j) for g, s in chunk for j in by_sample[(g, s)]] for chunk in chunks]


def build_micro_batches(groups: list[TrainGroup], rows: list[tuple[int, int, int]], size: int) -> list[MicroBatch]:
    """Chunk transitions into micro-batches of at most `size`, sorted by shared input so that G2RPO's
    G branches at step k need one forward of x_k."""
    rows = sorted(rows, key=lambda r: (r[0], int(groups[r[0]].rollout.transitions.input_id[r[2]]), r[2]))
    out = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        keys: dict[tuple[int, int], int] = {}
        index = []
        for g, _, j in chunk:
            input_id = int(groups[g].rollout.transitions.input_id[j])
            index.append(keys.setdefault((g, input_id), len(keys)))
        ts = [(groups[g].rollout.transitions, j) for g, _, j in chunk]
        out.append(
            MicroBatch(
                inputs=torch.stack([groups[g].rollout.transitions.inputs[u] for g, u in keys]),
                input_sigma=torch.stack([_sigma_of_input(groups[g].rollout, u) for g, u in keys]),
                input_prompt=[groups[g].prompt for g, _ in keys],
                index=torch.tensor(index),
                next_latents=torch.stack([t.next_latents[j] for t, j in ts]),
                sigma=torch.stack([t.sigma[j] for t, j in ts]),
                sigma_next=torch.stack([t.sigma_next[j] for t, j in ts]),
                old_log_prob=torch.stack([t.log_prob[j] for t, j in ts]),
                advantages=torch.stack([groups[g].advantages[s] for g, s, _ in chunk]).float(),
            )
        )
    return out


def _sigma_of_input(rollout: Rollout, input_id: int) -> torch.Tensor:
    t = rollout.transitions
    return t.sigma[(t.input_id == input_id).nonzero()[0, 0]]


class EmaWeights:
    """Exponential moving average of the trainable weights, updated after every optimizer step
    (float32 numpy, so it never touches the engine's parameters)."""

    def __init__(self, state: dict[str, np.ndarray], decay: float):
        self.decay = decay
        self.state = {k: v.astype(np.float32, copy=True) for k, v in state.items()}

    def update(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            self.state[k] *= self.decay
            self.state[k] += (1.0 - self.decay) * v.astype(np.float32)


class LearnerWorker:
    """One data-parallel learner rank holding the trainable policy inside a DeepSpeed engine."""

    def __init__(
        self,
        model: ModelConfig,
        sampling: SamplingConfig,
        learner: LearnerConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: str = "cpu",
        torch_threads: int | None = None,
    ):
        if torch_threads:
            torch.set_num_threads(torch_threads)  # Ray sets OMP_NUM_THREADS=1 in actors
        self.model_cfg, self.sampling, self.cfg = model, sampling, learner
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = torch.device(device)
        self.loss_fn = get_loss(learner.loss)
        self.policy: Policy | None = None
        self.engine = None
        self.sync_group: SyncGroup | None = None
        self.ema: EmaWeights | None = None
        self.version = 0

    # -- group setup

    def rendezvous(self) -> tuple[str, int]:
        """This rank's address and a free port (rank 0's serve the learner group and the sync group)."""
        ip = node_ip()
        return ip, free_port("0.0.0.0" if ip != "127.0.0.1" else "127.0.0.1")

    def setup(self, master_addr: str, master_port: int) -> str:
        init_distributed(DistInfo(self.rank, self.world_size, master_addr, master_port), self.device)
        # The LoRA init is random: seed it so every rank, and every rerun of a config, starts alike.
        torch.manual_seed(derive_seed(self.seed, "init"))
        self.policy = Policy.from_config(self.model_cfg, device=self.device)
        self.policy.transformer.train()
        self.engine = build_engine(
            self.policy.transformer, self.policy.trainable_parameters(), self.cfg, self.world_size
        )
        self.ema = EmaWeights(self.export_weights(), self.cfg.ema_decay) if self.cfg.ema_decay else None
        return f"learner-{self.rank}"

    # -- the update

    def _loss(self, mb: MicroBatch, noise_level: float, kind: str):
        policy, dev = self.policy, self.device
        x_in = mb.inputs.to(dev)
        cond = policy.encode(mb.input_prompt)
        sigma_in = mb.input_sigma.to(dev)
        index, x_next = mb.index.to(dev), mb.next_latents.to(dev)
        sigma, sigma_next = mb.sigma.to(dev), mb.sigma_next.to(dev)
        v = policy.velocity(x_in, sigma_in, cond)
        out = sde_step(
            v[index], x_in[index], sigma, sigma_next, noise_level=noise_level, kind=kind, prev_sample=x_next
        )
        kl = None
        if self.cfg.beta > 0:
            with torch.no_grad():
                v_ref = policy.velocity(x_in, sigma_in, cond, reference=True)
                ref = sde_step(
                    v_ref[index], x_in[index], sigma, sigma_next, noise_level=noise_level, kind=kind, prev_sample=x_next
                )
            kl = kl_to_reference(out, ref.mean, self.cfg.kl_form)
        return self.loss_fn(
            out.log_prob, mb.old_log_prob.to(dev), mb.advantages.to(dev),
            clip_range=self.cfg.clip_range, kl=kl, beta=self.cfg.beta, sigma=mb.sigma,
        )  # fmt: skip

    def _agree_on_micro_batches(self, count: int) -> int:
        """The most micro-batches any rank has for this optimizer step (every rank runs that many)."""
        import torch.distributed as dist

        t = torch.tensor([count], dtype=torch.long, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _padding(self, like: list[MicroBatch]) -> MicroBatch:
        """A zero-weight micro-batch: a real forward/backward so ZeRO's hooks fire, contributing nothing."""
        if like:
            mb = like[0]
            return MicroBatch(**{**mb.__dict__, "weight": 0.0})
        shape = self.policy.latent_shape(1)
        zeros = torch.zeros(shape)
        one = torch.ones(1)
        return MicroBatch(zeros, one * 0.5, [""], torch.zeros(1, dtype=torch.long), zeros, one * 0.5, one * 0.25,
                          torch.zeros(1), torch.zeros(1), weight=0.0)

    def train(self, groups: list[TrainGroup], iteration: int) -> dict[str, float]:
        """One iteration's update on this rank's groups: num_inner_epochs x optimizer_steps_per_iteration
        optimizer steps. Returns averaged diagnostics."""
        if self.engine is None:
            raise RuntimeError("LearnerWorker.setup() must run before train()")
        start = time.perf_counter()
        noise_level = groups[0].rollout.noise_level if groups else self.sampling.noise_level
        kind = groups[0].rollout.sde_kind if groups else self.sampling.sde_kind
        rows = flatten_transitions(groups)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, float] = defaultdict(float)
        steps = 0
        staleness = [self.version - g.policy_version for g in groups]
        for epoch in range(self.cfg.num_inner_epochs):
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "minibatches", iteration, epoch, self.rank))
            for minibatch in split_minibatches(rows, self.cfg.optimizer_steps_per_iteration, gen):
                mbs = build_micro_batches(groups, minibatch, self.cfg.micro_batch_size)
                total = self._agree_on_micro_batches(len(mbs))
                if total == 0:
                    continue
                mbs += [self._padding(mbs)] * (total - len(mbs))
                set_micro_batches(self.engine, total)
                for mb in mbs:
                    loss, diag = self._loss(mb, noise_level, kind)
                    self.engine.backward(loss * mb.weight)
                    self.engine.step()
                    if mb.weight:
                        for k, v in diag.items():
                            sums[k] += v * len(mb)
                            counts[k] += len(mb)
                steps += 1
                if self.ema is not None:
                    self.ema.update(self.export_weights())
                norm = self.engine.get_global_grad_norm()
                if norm is not None:
                    sums["learner/grad_norm"] += float(norm)
                    counts["learner/grad_norm"] += 1
        if steps:
            self.version += 1
        metrics = {k: sums[k] / counts[k] for k in sums}
        metrics.update({
            "learner/optimizer_steps": float(steps),
            "learner/transitions": float(len(rows)),
            "learner/seconds": time.perf_counter() - start,
            "learner/staleness_max": float(max(staleness, default=0)),
            "learner/staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
        })  # fmt: skip
        return metrics

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

    def get_version(self) -> int:
        return self.version

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
        """The digest of what `export_weights` sends (every rank must call it under ZeRO-3; "" off rank 0)."""
        state = self.export_weights()
        return weights_digest({k: torch.from_numpy(v) for k, v in state.items()}) if state else ""

    def join_sync_group(self, master_addr: str, master_port: int, world_size: int) -> str:
        """Rank 0 of the weight-broadcast group (only learner rank 0 calls this); a group this rank
        belonged to before (a rollout actor restarted) is closed first."""
        if self.sync_group is not None:
            self.sync_group.close()
        self.sync_group = SyncGroup(master_addr, master_port, 0, world_size, self.device)
        return f"learner-{self.rank}"

    def broadcast_weights(self) -> float:
        """Send the trainable weights to every rollout actor of the sync group; returns the seconds
        spent inside the broadcast. Under ZeRO-3 every rank calls this to take part in the gather;
        only rank 0 sends."""
        state = self.export_weights()
        start = time.perf_counter()
        if self.sync_group is not None:
            self.sync_group.broadcast({k: torch.from_numpy(v) for k, v in state.items()})
        return time.perf_counter() - start

    def save_checkpoint(self, directory: str) -> None:
        """This rank's optimizer state (and, on rank 0, the trainable weights) into `directory`."""
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        weights = self._trainable_state()  # every rank: a collective under ZeRO-3
        if self.rank == 0:
            save_file(weights, path / "trainable.safetensors")  # in the weights' own dtype: no fp32 copy of bf16
            if self.ema is not None:
                save_file({k: torch.from_numpy(v) for k, v in self.ema.state.items()}, path / "ema.safetensors")
        save_optimizer_state(
            self.engine.optimizer.state_dict(), path / f"optimizer_rank{self.rank}",
            extra={"global_steps": self.engine.global_steps, "version": self.version},
        )  # fmt: skip

    def load_checkpoint(self, directory: str) -> int:
        """Restore weights and optimizer state written by `save_checkpoint`; returns the policy version."""
        from safetensors.torch import load_file

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
        state, extra = load_optimizer_state(path / f"optimizer_rank{self.rank}", live=self.engine.optimizer.state_dict())
        try:
            load_into_optimizer(self.engine.optimizer, state, self.rank, self.world_size)
        except (KeyError, RuntimeError, ValueError) as err:  # another layout: LoRA rank, ZeRO stage, rank count
            raise ValueError(f"optimizer state {path / f'optimizer_rank{self.rank}'} does not fit this run: {err}") from None
        self.engine.global_steps = int(extra["global_steps"])
        self.version = int(extra["version"])
        return self.version
