"""A weight-broadcast process group beside DeepSpeed's: learner rank 0 (group rank 0) and every rollout
actor (ranks 1..N), gloo on CPU, NCCL on GPU.

The group is built directly from a TCPStore (PrefixStore -> ProcessGroupGloo / ProcessGroupNCCL), its
server and every member's pair listener on loopback in a single-node run (common/net.py), and is
never the default group, so it cannot interfere with the learner's data-parallel group. Weights are
broadcast bucket by bucket (common/weight_buckets.py: both sides derive the same plan from the same
trainable-weight layout), each after a small header that lets the receivers verify it.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from common.net import member_address, pin_transport_interfaces, tcp_store
from common.weight_buckets import BucketSpec, WeightIntegrityError, checksum, plan_hash, verify


class SyncGroup:
    """One member of the broadcast group."""

    def __init__(self, master_addr: str, master_port: int, rank: int, world_size: int, device: torch.device,
                 timeout_s: float = 300.0):
        timeout = timedelta(seconds=timeout_s)
        own = master_addr if rank == 0 else member_address(master_addr)
        pin_transport_interfaces(own, device)  # NCCL's bootstrap listener
        store = tcp_store(master_addr, master_port, world_size, rank == 0, timeout)
        self.store = dist.PrefixStore("flowray-weight-sync", store)
        self.device, self.rank, self.world_size = device, rank, world_size
        if device.type == "cuda":
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world_size)
        else:
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=own)]
            self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, opts)

    def close(self) -> None:
        """Tear the group down: abort (it does not wait for a collective a dead member never joined, as
        NCCL's shutdown would) and release the store, so no communicator or port outlives the group."""
        if self.pg is not None:
            self.pg.abort()
        self.pg = self.store = None

    def _broadcast(self, t: torch.Tensor) -> None:
        self.pg.broadcast([t], dist.BroadcastOptions()).wait()

    def send_plan(self, specs: list[BucketSpec]) -> None:
        """Rank 0: announce the bucket plan (count and layout), so receivers whose plan differs fail
        before any bucket is sent."""
        self._broadcast(torch.tensor([len(specs), plan_hash(specs)], dtype=torch.int64, device=self.device))

    def receive_plan(self, specs: list[BucketSpec]) -> None:
        """Ranks 1..N: check rank 0's plan against this side's `specs`."""
        header = torch.empty(2, dtype=torch.int64, device=self.device)
        self._broadcast(header)
        count, layout = (int(v) for v in header.cpu())
        if (count, layout) != (len(specs), plan_hash(specs)):
            raise WeightIntegrityError(
                f"weight sync: the learner sends {count} buckets with another layout than this side's "
                f"{len(specs)} (trainable names, shapes or dtypes differ: model.lora settings or precision?)"
            )

    def send_bucket(self, spec: BucketSpec, flat: torch.Tensor) -> tuple[int, int]:
        """Rank 0: broadcast a packed bucket (on this group's device), after a header with its layout
        hash and checksum; returns the checksum."""
        sums = checksum(flat)
        self._broadcast(torch.tensor([spec.layout_hash(), *sums], dtype=torch.int64, device=self.device))
        self._broadcast(flat)
        return sums

    def receive_bucket(self, spec: BucketSpec) -> tuple[torch.Tensor, tuple[int, int]]:
        """Ranks 1..N: the bucket rank 0 sends for `spec` (this side's plan), verified; returns the flat
        tensor (the one transient copy before the load) and its checksum."""
        header = torch.empty(3, dtype=torch.int64, device=self.device)
        self._broadcast(header)
        layout, *sums = (int(v) for v in header.cpu())
        if layout != spec.layout_hash():
            raise WeightIntegrityError(
                f"weight sync: {spec.describe()} was sent with another layout than this side's plan "
                f"(trainable names, shapes or dtypes differ: model.lora settings or precision?)"
            )
        flat = torch.empty(sum(spec.numels), dtype=spec.dtype, device=self.device)
        self._broadcast(flat)
        verify(spec, flat, tuple(sums))
        return flat, (sums[0], sums[1])

