"""The rollout worker: holds a copy of the policy and samples prompt groups with the algorithm's strategy.

A plain class (cluster/actors.py wraps it as a Ray actor; tests run it in-process). Every group's
randomness comes from a seed the driver derives from (run seed, iteration, group index), so a group
is the same whichever actor samples it, and a group redone after an actor restart is bit-identical.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from algorithms import Algorithm, default_algorithm
from common.actor_metrics import describe, report_process
from common.collective import SyncGroup
from common.data_plane import EvalShare, put_eval_share, put_group
from common.memory import peak_memory_gb
from common.offload import Offloader
from common.weight_buckets import load_packed, plan_for, sync_digest, unpack_into, weights_digest
from models.config import ModelConfig, SamplingConfig
from models.devices import resolve_device
from models.policy import PRECISION_DTYPES, Policy
from models.sampling import eval_batches, eval_sample, sample_group
from models.types import PromptEmbeds, Rollout


@dataclass(frozen=True)
class GroupRequest:
    """One prompt group to sample."""

    group_index: int  # global index within the iteration (for bookkeeping and exactly-once accounting)
    prompt: str
    metadata: dict
    seed: int
    iteration: int
    with_latents: bool = False  # put the final latents in the object store too: a scorer declares wants_latents


@dataclass
class GroupResult:
    """A sampled group: the strategy's record, the decoded images, and the policy version that made them.

    In-process (`RolloutWorker.rollout`) it holds everything; by reference (`rollout_by_reference`,
    common/data_plane.py) `images` and `bulk` are ObjectRefs and `rollout` keeps the metadata only."""

    request: GroupRequest
    rollout: Rollout
    images: Any  # uint8 [I, H, W, 3], one per reward_group entry; or its ObjectRef
    policy_version: int
    actor: str
    seconds: float
    sampled_at: float = 0.0  # wall-clock time (time.time()) sampling and decoding ended
    bulk: Any = None  # ObjectRef of the learner's payload (data_plane.LearnerPayload); None in-process
    latents: Any = None  # ObjectRef of the final latents [I, ...] when request.with_latents; None otherwise

    @property
    def num_images(self) -> int:
        return int(self.rollout.reward_group.shape[0])




class RolloutWorker:
    """Samples groups for the prompts it is given; loads new weights when told."""

    def __init__(
        self,
        model: ModelConfig,
        sampling: SamplingConfig,
        *,
        algorithm: Algorithm | None = None,
        name: str = "rollout-0",
        device: str = "auto",
        torch_threads: int | None = None,
        precision: str = "fp32",
        rows_per_forward: int | None = None,
        images_per_decode: int | None = None,
        policy: Policy | None = None,
    ):
        """`device`: 'auto' (a GPU when this process sees one: `launch.py eval`), 'cuda' or 'cpu' (rollout
        actors, by their reservation); `precision`: learner.precision, so that trainable weights have the
        learner's dtype;
        `rows_per_forward`, `images_per_decode`: cluster.rollout_rows_per_forward / _images_per_decode;
        `algorithm`: the unit whose strategy samples the groups (None: Flow-GRPO's defaults);
        `policy`: sample with this policy instead of loading one (cluster.layout 'hybrid': the learner
        rank's own, cluster/hybrid.py; `device`, `precision` and the two sizes are then its own)."""
        if torch_threads:
            torch.set_num_threads(torch_threads)  # Ray sets OMP_NUM_THREADS=1 in actors
        self.name, self.sampling = name, sampling
        self.algorithm = algorithm if algorithm is not None else default_algorithm()
        own_process = policy is None  # a hybrid worker's sampler (its policy given) is reported as that worker
        if policy is None:
            policy = Policy.from_config(
                model, device=resolve_device(device, name), trainable_dtype=PRECISION_DTYPES[precision],
                rows_per_forward=rows_per_forward, images_per_decode=images_per_decode,
            )  # fmt: skip
            policy.transformer.eval()
        self.policy = policy
        self.version = 0
        self.sync_group: SyncGroup | None = None
        grid = sampling.sigma_schedule
        self.sigmas = self.policy.sigmas(sampling.num_steps, sampling.shift, sampling.shift_mode, grid)
        self.eval_sigmas = self.policy.sigmas(sampling.eval_num_steps, sampling.shift, sampling.shift_mode, grid)
        self.eval_guidance = model.eval_guidance_scale  # None: the training guidance_scale
        self._offloader: Offloader | None = None  # cluster.colocate_offload: made by the first `offload`
        if own_process:
            report_process("rollout", name, lambda: self.version)

    def __repr__(self) -> str:
        """The Ray dashboard's Repr column and log prefix (common/actor_metrics.py)."""
        return describe(type(self).__name__, "rollout", self.name, policy_version=self.version)

    # -- sampling

    def _velocity_for(self, prompt: str, guidance_scale: float | None = None):
        cond = self.policy.encode([prompt])
        return lambda x, sigma: self.policy.velocity(x, sigma, cond.expand(x.shape[0]), guidance_scale)

    def _init_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.policy.initial_noise(n, generator)

    @torch.no_grad()
    def rollout(self, requests: list[GroupRequest]) -> list[GroupResult]:
        """Sample each requested group with the algorithm's strategy; images decoded to uint8."""
        self.reload()
        results = []
        for req in requests:
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(req.seed)
            record = sample_group(
                self.algorithm, self.sampling, self._velocity_for(req.prompt), self._init_noise, self.sigmas,
                generator=generator, iteration=req.iteration,
            )  # fmt: skip
            record.conditioning = self.policy.conditioning(req.prompt)  # the learner's text input (no encoders there)
            images = self.policy.decode(record.final_latents).numpy()
            results.append(GroupResult(req, _to_cpu(record), images, self.version, self.name,
                                       time.perf_counter() - start, sampled_at=time.time()))
        return results

    def rollout_by_reference(self, request: GroupRequest) -> GroupResult:
        """One group, its images and learner payload left in the object store (common/data_plane.py):
        the driver calls this once per group, so each group's images reach the reward actors as soon as
        it is sampled."""
        return put_group(self.rollout([request])[0], latents=request.with_latents)

    @torch.no_grad()
    def evaluate(self, prompts: list[str], seeds: list[list[int]], grid: str = "eval") -> np.ndarray:
        """Deterministic ODE images, one per seed of each prompt (cluster.evaluation fixes the seeds):
        [sum of len(seeds[i]), H, W, 3], prompt-major. `grid` 'eval' uses the T_eval grid; 'train' the
        sampling grid (the training monitor's cheap probe).

        Consecutive prompts share every forward, up to as many latents as the largest call of a rollout
        (algorithm.rollout_latents_per_call: the call the memory planner checks; Policy.rows_per_forward
        still splits it), each image from its own seed's noise (`eval_sample`); each prompt's images are
        decoded on their own, as a rollout decodes its group."""
        self.reload()
        sigmas = {"eval": self.eval_sigmas, "train": self.sigmas}[grid]
        guidance = self.eval_guidance if grid == "eval" else None  # the probe samples as the rollouts do
        counts = [len(prompt_seeds) for _, prompt_seeds in zip(prompts, seeds, strict=True)]
        out = []
        for batch in eval_batches(counts, self.algorithm.rollout_latents_per_call(self.sampling)):
            cond = PromptEmbeds.cat([self.policy.encode([prompts[i]]).expand(counts[i]) for i in batch])

            def velocity(x, sigma, cond=cond):
                return self.policy.velocity(x, sigma, cond, guidance)

            batch_seeds = [s for i in batch for s in seeds[i]]
            latents = eval_sample(velocity, self._init_noise, sigmas, seeds=batch_seeds)
            out += [self.policy.decode(part).numpy() for part in latents.split([counts[i] for i in batch])]
        return np.concatenate(out)

    def evaluate_by_reference(self, prompts: list[str], seeds: list[list[int]], grid: str = "eval",
                              keep: tuple[int, ...] = ()) -> EvalShare:
        """`evaluate`, its images left in the object store for the reward actors and the rows `keep`
        (the driver's pictures) returned inline (common/data_plane.py)."""
        return put_eval_share(self.evaluate(prompts, seeds, grid), keep)

    # -- weights

    def load_weights(self, state: dict[str, np.ndarray | torch.Tensor], version: int) -> dict:
        """Load a name -> array dict of trainable weights (evaluation's EMA weights, tests); returns an
        acknowledgement with the version and the sha256 digest of what this actor now holds."""
        self.reload()  # colocated offload: a sync writes into the live weights, which must be back
        tensors = {k: torch.as_tensor(np.array(v, copy=True)) if isinstance(v, np.ndarray) else v for k, v in state.items()}
        self.policy.load_trainable(tensors)
        self.version = version
        return {"actor": self.name, "version": version, "digest": weights_digest(self.policy.export_trainable())}

    def join_sync_group(self, master_addr: str, master_port: int, rank: int, world_size: int) -> str:
        """Become rank `rank` of the weight-broadcast group (cluster.weight_sync, collective backend),
        closing the group this actor belonged to before (another member restarted)."""
        if self.sync_group is not None:
            self.sync_group.close()
        self.sync_group = SyncGroup(master_addr, master_port, rank, world_size, self.policy.device)
        return self.name

    def load_buckets(self, buckets: list, version: int) -> dict:
        """Weight sync through the object store: verify and load the learner's packed buckets
        (LearnerWorker.export_sampling_buckets; ObjectRefs are fetched one at a time and read in place
        from the object store's shared memory) into the live trainable weights; returns an
        acknowledgement with the version and the sync digest (common/weight_buckets.py)."""
        import ray

        self.reload()
        fetched = (ray.get(b) if isinstance(b, ray.ObjectRef) else b for b in buckets)
        digest = load_packed(fetched, self.policy.trainable_tensors())
        self.version = version
        return {"actor": self.name, "version": version, "digest": digest}

    def receive_weights(self, version: int) -> dict:
        """Weight sync through the collective group: receive learner rank 0's buckets one at a time, each
        verified and copied into the live trainable weights (one bucket in flight)."""
        self.reload()
        live = self.policy.trainable_tensors()
        specs, sums = plan_for(live), []
        self.sync_group.receive_plan(specs)
        for spec in specs:
            flat, sums_of_bucket = self.sync_group.receive_bucket(spec)
            unpack_into(spec, flat, live)
            sums.append(sums_of_bucket)
        self.version = version
        return {"actor": self.name, "version": version, "digest": sync_digest(specs, sums)}

    def weights(self) -> dict[str, torch.Tensor]:
        self.reload()
        return self.policy.export_trainable()

    def get_version(self) -> int:
        return self.version

    # -- colocation (cluster.colocate_offload, common/offload.py)

    def offload(self) -> int:
        """While the colocated learner rank trains: free the pipeline's weights (transformer with its
        adapters, text encoders, VAE). Returns the bytes freed; sampling reloads first."""
        if self._offloader is None:
            self._offloader = Offloader(self.policy.device, self.name)
        return self._offloader.offload(self.policy.tensors())

    def reload(self) -> int:
        """Bring back what `offload` freed, bit for bit; returns the bytes (0: nothing was offloaded)."""
        return self._offloader.reload() if self._offloader is not None else 0

    def pid(self) -> int:
        """This worker's process id (fault-injection tests kill it)."""
        import os

        return os.getpid()

    def peak_memory(self) -> dict[str, float]:
        return peak_memory_gb(self.policy.device)

    def ping(self) -> str:
        return self.name


def _to_cpu(obj):
    """Move every tensor of a (nested) dataclass record to CPU in place: records cross process
    boundaries through Ray's object store."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if torch.is_tensor(value):
            setattr(obj, f.name, value.cpu())
        elif dataclasses.is_dataclass(value):
            _to_cpu(value)
        elif isinstance(value, dict):
            setattr(obj, f.name, {k: v.cpu() if torch.is_tensor(v) else v for k, v in value.items()})
    return obj
