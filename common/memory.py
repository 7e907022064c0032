"""Peak memory of the calling process, for the per-actor report of scripts/device_check.py."""

from __future__ import annotations

import resource

import torch


def peak_memory_gb(device: torch.device | str) -> dict[str, float]:
    """On CUDA: the caching allocator's peak allocated and reserved bytes on `device`; always: the
    process's peak resident set (Linux reports ru_maxrss in KiB)."""
    device = torch.device(device)
    out = {"host_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        out["gpu_peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["gpu_peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
    return out
