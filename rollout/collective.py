"""A weight-broadcast process group beside DeepSpeed's: learner rank 0 (group rank 0) and every rollout
actor (ranks 1..N), gloo on CPU, NCCL on GPU.

The group is built directly from a TCPStore (PrefixStore -> ProcessGroupGloo / ProcessGroupNCCL) and is
never the default group, so it cannot interfere with the learner's data-parallel group. Tensors are
broadcast in buckets of at most `bucket_bytes`, flattened per dtype, in sorted-name order, which both
sides derive from the same trainable-weight layout.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist


class SyncGroup:
    """One member of the broadcast group."""

    def __init__(self, master_addr: str, master_port: int, rank: int, world_size: int, device: torch.device,
                 timeout_s: float = 300.0):
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(master_addr, master_port, world_size, is_master=rank == 0, timeout=timeout)
        self.store = dist.PrefixStore("flowray-weight-sync", store)
        self.device, self.rank, self.world_size = device, rank, world_size
        if device.type == "cuda":
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world_size)
        else:
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=_own_address(master_addr))]
            self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, opts)

    def close(self) -> None:
        """Tear the group down: abort (it does not wait for a collective a dead member never joined, as
        NCCL's shutdown would) and release the store, so no communicator or port outlives the group."""
        if self.pg is not None:
            self.pg.abort()
        self.pg = self.store = None

    def broadcast(self, state: dict[str, torch.Tensor], bucket_bytes: int = 64 << 20) -> None:
        """Broadcast `state` from rank 0 in place: on receivers, `state` holds correctly shaped buffers."""
        for bucket in _buckets(state, bucket_bytes):
            flat = torch.cat([state[n].reshape(-1) for n in bucket]).to(self.device) if self.rank == 0 else torch.empty(
                sum(state[n].numel() for n in bucket), dtype=state[bucket[0]].dtype, device=self.device
            )
            self.pg.broadcast([flat], dist.BroadcastOptions()).wait()
            if self.rank != 0:
                offset = 0
                for n in bucket:
                    t = state[n]
                    t.copy_(flat[offset : offset + t.numel()].view_as(t).to(t.device))
                    offset += t.numel()


def _own_address(master_addr: str) -> str:
    """The address gloo binds to and peers connect to: loopback when the group is local, else this
    node's IP as Ray knows it."""
    if master_addr in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else master_addr


def _buckets(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[list[str]]:
    """Sorted names grouped into same-dtype buckets of at most `bucket_bytes` (a larger tensor alone)."""
    out: list[list[str]] = []
    size, dtype = 0, None
    for name in sorted(state):
        t = state[name]
        nbytes = t.numel() * t.element_size()
        if not out or t.dtype != dtype or size + nbytes > bucket_bytes:
            out.append([])
            size, dtype = 0, t.dtype
        out[-1].append(name)
        size += nbytes
    return out
