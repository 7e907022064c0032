"""cluster.layout 'hybrid': one worker per learner rank holds the policy once, samples with its live
weights and trains them (flow_grpo's layout, where every GPU samples and trains).

A `HybridWorker` is a learner rank (learner/worker.py: DeepSpeed engine, optimizer, checkpoints) that
also loads the text encoders and the VAE and answers the rollout actor's calls (rollout/worker.py's
`RolloutWorker`, given this rank's own `Policy`): the driver uses the same actors as its learner ranks
and as its rollout actors. Sampling runs under no_grad with the transformer in eval mode and reads the
engine's parameters as they are, so there is nothing to send after an update: the weight sync only asks
every worker for the digest of the weights it samples with and checks that they agree
(cluster/weight_sync.py, `InPlaceSync`).

What the rollout actors of the split layout sample with, a hybrid worker swaps in place on its device
(learner/forward_process.py `swapped_in`) and swaps back bit for bit:
  - the forward-process family's sampling policy (DiffusionNFT's EMA, `plan.sampling_source()`);
  - evaluation weights the driver loads (`load_weights`: the learner's EMA, or the trained weights where
    the sampling policy is a separate one) until it asks for the training weights back
    (`restore_sampling_weights`); `train` and the checkpoint calls restore them first in any case.
ZeRO-3 is refused by the config (cluster/config.py `_check_hybrid`): its ranks hold slices of each weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from common.weight_buckets import checksum, pack, plan_for, sync_digest
from learner.forward_process import swapped_in
from learner.worker import LearnerWorker
from models.policy import PRECISION_DTYPES, Policy
from rollout.worker import GroupRequest, GroupResult, RolloutWorker


class HybridWorker(LearnerWorker):
    """A learner rank that also samples (see the module docstring)."""

    role = "hybrid"

    def __init__(
        self, *args, rows_per_forward: int | None = None, images_per_decode: int | None = None, **kwargs
    ):
        """LearnerWorker's arguments, and the rollout side's two sizes (cluster.rollout_rows_per_forward,
        cluster.rollout_images_per_decode)."""
        super().__init__(*args, **kwargs)
        self.name = f"hybrid-{self.rank}"
        self.rows_per_forward, self.images_per_decode = rows_per_forward, images_per_decode
        self.sampler: RolloutWorker | None = None
        self._evaluation_weights: dict[str, torch.Tensor] | None = None  # the live values while others are in

    def load_policy(self) -> Policy:
        """The whole pipeline (a learner rank alone loads the transformer only): this rank encodes the
        prompts and decodes the images it samples."""
        return Policy.from_config(
            self.model_cfg, device=self.device, trainable_dtype=PRECISION_DTYPES[self.cfg.precision],
            reference_copy=self.algorithm.needs_reference(self.cfg), rows_per_forward=self.rows_per_forward,
            images_per_decode=self.images_per_decode,
        )  # fmt: skip

    def setup(self, master_addr: str, master_port: int) -> str:
        name = super().setup(master_addr, master_port)
        self.sampler = RolloutWorker(
            self.model_cfg, self.sampling, algorithm=self.algorithm, name=self.name, policy=self.policy
        )
        return name

    # -- the rollout actor's calls

    @contextmanager
    def _sampling(self) -> Iterator[None]:
        """The block samples: eval mode, and the weights the split layout's rollout actors would hold."""
        transformer = self.policy.transformer
        held = self.plan.sampling_source() if self._evaluation_weights is None else None
        with ExitStack() as stack:
            if held is not None:
                stack.enter_context(swapped_in(self.policy.trainable_tensors(), held))
            transformer.eval()
            try:
                yield
            finally:
                transformer.train()

    def rollout(self, requests: list[GroupRequest]) -> list[GroupResult]:
        with self._sampling():
            return self.sampler.rollout(requests)

    def rollout_by_reference(self, request: GroupRequest) -> GroupResult:
        with self._sampling():
            return self.sampler.rollout_by_reference(request)

    def evaluate(self, prompts: list[str], seeds: list[list[int]], grid: str = "eval"):
        with self._sampling():
            return self.sampler.evaluate(prompts, seeds, grid)

    def evaluate_by_reference(
        self, prompts: list[str], seeds: list[list[int]], grid: str = "eval", keep: tuple[int, ...] = ()
    ):
        with self._sampling():
            return self.sampler.evaluate_by_reference(prompts, seeds, grid, keep)

    def load_weights(self, state: dict, version: int) -> dict:
        """Sample with `state` (evaluation's weights) until `restore_sampling_weights`: the live weights are
        kept on the device meanwhile. Returns the rollout actor's acknowledgement."""
        live = self.policy.trainable_tensors()
        if self._evaluation_weights is None:
            self._evaluation_weights = {n: t.detach().clone() for n, t in live.items()}
        ack = self.sampler.load_weights(state, version)
        return ack

    def restore_sampling_weights(self) -> None:
        """Put the live (trained) weights back after an evaluation with others; nothing to do otherwise."""
        if self._evaluation_weights is not None:
            with torch.no_grad():
                for name, t in self.policy.trainable_tensors().items():
                    t.copy_(self._evaluation_weights[name])
            self._evaluation_weights = None

    def sampling_digest(self, version: int) -> dict:
        """The in-place weight sync: take `version` as the sampling version and return the sync digest of
        the weights this worker samples with (the split layout's learner rank 0 sends exactly these)."""
        self.restore_sampling_weights()
        live = self.policy.trainable_tensors()
        source = self.plan.sampling_source() or live
        specs = plan_for(live, self.sync_bucket_bytes)
        sums = [checksum(pack(spec, source, self.device)) for spec in specs]
        self.sampler.version = version
        return {"actor": self.name, "version": version, "digest": sync_digest(specs, sums)}

    def weights(self) -> dict[str, torch.Tensor]:
        """The trainable weights this worker samples with, as CPU tensors (a rollout actor's `weights`)."""
        with self._sampling():
            return self.sampler.weights()

    def ping(self) -> str:
        return self.name

    # -- the learner's calls that need the training weights in place

    def train(self, groups, iteration: int) -> dict[str, float]:
        self.restore_sampling_weights()
        return super().train(groups, iteration)

    def save_checkpoint(self, directory: str) -> dict[str, dict]:
        self.restore_sampling_weights()
        return super().save_checkpoint(directory)

    def load_checkpoint(self, directory: str) -> int:
        self.restore_sampling_weights()
        version = super().load_checkpoint(directory)
        self.sampler.version = version
        return version
