"""Offload an idle actor's tensors and bring them back bit for bit (cluster.colocate_offload).

A colocated rollout actor and learner rank share a device (cluster/placement.py) but take turns: the
rollout actor samples while the learner waits, the learner trains while the rollout actor waits. The
idle side moves its tensors out of the device (verl's and UniRL's colocated modes: verl offloads the
FSDP parameters, gradients and optimizer state after the update and wakes the inference engine before
sampling; DeepSpeed's `engine.offload_states` / `reload_states` move ZeRO's buffers to pinned host
memory). One code path, the target chosen by the device the tensors live on:

- `cuda`: pinned host memory (a buffer per storage, allocated on the first offload and reused), then
  `torch.cuda.empty_cache()` so the other process can allocate what was freed;
- `cpu`: a spill file (unlinked: private to the process). On CPU "device" and "host" are the same memory,
  so moving to host would save nothing; the file makes the saving real (and measurable as RSS).

The unit is the storage, not the tensor: every storage the given tensors use is copied out and resized
to 0 bytes in place, so every tensor and view sharing it (DeepSpeed's flat ZeRO buffers, parameters that
are views into them, peft's adapters) is emptied at once, keeps its Python identity, and sees its bytes
again after `reload` (FSDP frees parameter storages the same way: `_free_storage`). Nothing may read the
tensors in between: the actors reload at the entry points that read them (rollout/worker.py,
learner/worker.py), so a call in the wrong phase costs memory, never correctness.

The spill file is raw bytes, not safetensors: this process writes it and reads it back into storages it
sized itself (no header is parsed), and safetensors' writer materialises every tensor's bytes before
writing, which would double the peak this module exists to lower.
"""

from __future__ import annotations

import ctypes
import tempfile
from collections.abc import Iterable

import torch


def distinct_storages(tensors: Iterable[torch.Tensor]) -> list[torch.UntypedStorage]:
    """The distinct non-empty storages of `tensors`, in first-seen order."""
    out: dict[int, torch.UntypedStorage] = {}
    for t in tensors:
        s = t.untyped_storage()
        if s.nbytes():
            out.setdefault(s.data_ptr(), s)
    return list(out.values())


def make_resizable(tensors: list[torch.Tensor]) -> None:
    """Move tensors whose memory torch does not own (a loader's mmap or buffer: not resizable) into
    storages it does, once, keeping views of one storage views of one new storage."""
    groups: dict[int, list[torch.Tensor]] = {}
    for t in tensors:
        if not t.untyped_storage().resizable():
            groups.setdefault(t.untyped_storage().data_ptr(), []).append(t)
    with torch.no_grad():
        for members in groups.values():
            old = members[0].untyped_storage()
            new = torch.UntypedStorage(old.nbytes(), device=old.device)
            _bytes_of(new).copy_(_bytes_of(old))
            for t in members:
                t.set_(new, t.storage_offset(), t.size(), t.stride())


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over the whole storage (no copy)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _host_buffer(storage: torch.UntypedStorage):
    """A writable buffer over a CPU storage's bytes for file I/O. Not `Tensor.numpy()`: that marks the
    storage non-resizable for good (numpy may hold the pointer), and offloading resizes it."""
    return (ctypes.c_char * storage.nbytes()).from_address(storage.data_ptr())


def _release_freed_host_memory() -> None:
    """Give freed heap pages back to the OS: glibc keeps freed chunks below its (adaptive, up to 32 MB)
    mmap threshold in the heap, where they would still count as this process's RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps its own policy
        pass


class PinnedHost:
    """Offload target of CUDA storages: pinned host buffers, reused across offloads."""

    def __init__(self, name: str):
        self.buffers: list[torch.Tensor] = []

    def save(self, storages: list[torch.UntypedStorage]) -> None:
        if [b.numel() for b in self.buffers] != [s.nbytes() for s in storages]:
            self.buffers = [torch.empty(s.nbytes(), dtype=torch.uint8, pin_memory=True) for s in storages]
        for buf, s in zip(self.buffers, storages, strict=True):
            buf.copy_(_bytes_of(s))
        torch.cuda.synchronize()

    def load(self, storages: list[torch.UntypedStorage]) -> None:
        for buf, s in zip(self.buffers, storages, strict=True):
            _bytes_of(s).copy_(buf, non_blocking=True)
        torch.cuda.synchronize()

    def after_free(self) -> None:
        torch.cuda.empty_cache()

    def close(self) -> None:
        self.buffers = []


class SpillFile:
    """Offload target of CPU storages: an unlinked temporary file of raw bytes (the OS reclaims it with
    the process, even one Ray kills while it is offloaded)."""

    def __init__(self, name: str):
        self.prefix = f"flowray-offload-{name}-"
        self.file = None

    def save(self, storages: list[torch.UntypedStorage]) -> None:
        self.file = tempfile.TemporaryFile(prefix=self.prefix)
        for s in storages:
            self.file.write(_host_buffer(s))
        self.file.flush()

    def load(self, storages: list[torch.UntypedStorage]) -> None:
        self.file.seek(0)
        for s in storages:
            if self.file.readinto(_host_buffer(s)) != s.nbytes():
                raise OSError("offload spill file is shorter than what was offloaded")
        self.close()

    def after_free(self) -> None:
        _release_freed_host_memory()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


TARGETS = {"cuda": PinnedHost, "cpu": SpillFile}  # device type -> where its idle storages go


class Offloader:
    """Moves one actor's idle tensors out (`offload`) and back (`reload`), bit for bit."""

    def __init__(self, device: torch.device, name: str):
        if device.type not in TARGETS:
            raise ValueError(f"cluster.colocate_offload has no offload target for device {device.type!r} "
                             f"(supported: {', '.join(TARGETS)})")
        self.device, self.name = device, name
        self.target = TARGETS[device.type](name)
        self._storages: list[torch.UntypedStorage] = []
        self._sizes: list[int] = []

    @property
    def offloaded(self) -> bool:
        return bool(self._storages)

    def offload(self, tensors: Iterable[torch.Tensor], keep: Iterable[torch.Tensor] = ()) -> int:
        """Copy out and free every storage `tensors` use, except those of `keep`; returns the bytes freed."""
        if self.offloaded:
            raise RuntimeError(f"{self.name}: offload called twice without a reload in between")
        kept = {t.untyped_storage().data_ptr() for t in keep}
        # Only this device's tensors: ZeRO keeps placeholders on the meta device (no memory to move).
        tensors = [t for t in tensors if t.device.type == self.device.type and t.untyped_storage().data_ptr() not in kept]
        make_resizable(tensors)  # from_pretrained's weights on CPU live in the loader's memory
        storages = distinct_storages(tensors)
        self.target.save(storages)
        self._sizes = [s.nbytes() for s in storages]
        for s in storages:
            s.resize_(0)
        self._storages = storages
        self.target.after_free()
        return sum(self._sizes)

    def reload(self) -> int:
        """Give every offloaded storage its bytes back; returns the bytes restored (0 if nothing was offloaded)."""
        if not self.offloaded:
            return 0
        for s, n in zip(self._storages, self._sizes, strict=True):
            s.resize_(n)
        self.target.load(self._storages)
        restored, self._storages, self._sizes = sum(self._sizes), [], []
        return restored

    def close(self) -> None:
        self.target.close()
