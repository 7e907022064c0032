"""Which device an actor computes on, chosen explicitly and logged.

Ray gives each actor that reserves GPUs its own CUDA_VISIBLE_DEVICES (the GPUs it was assigned), so
inside an actor the assigned GPU is usually cuda:0 and every learner rank has LOCAL_RANK 0. Libraries
that pick a device from LOCAL_RANK or the current device then work only by coincidence, and NCCL hangs
when two ranks end up on one GPU (DeepSpeed and verl users report exactly this). Here the device index
is derived from Ray's assignment and CUDA_VISIBLE_DEVICES, set as the current device, passed on as
LOCAL_RANK, and printed, so a log shows which physical GPU each actor uses.
"""

from __future__ import annotations

import os

import torch

DEVICE_KINDS = ("auto", "cpu", "cuda")


def visible_index(assigned: list[str], visible: str | None) -> int:
    """Index, among the GPUs this process sees, of the first GPU Ray assigned to it.

    `visible` is CUDA_VISIBLE_DEVICES (None or "" when unset: all GPUs visible, indices are the ids)."""
    if not assigned:
        return 0
    first = str(assigned[0])
    if not visible:
        return int(first)
    ids = [v.strip() for v in visible.split(",")]
    if first not in ids:
        raise RuntimeError(f"Ray assigned GPU {first}, but CUDA_VISIBLE_DEVICES={visible!r} hides it")
    return ids.index(first)


def _ray_gpu_ids() -> list[str]:
    try:
        import ray

        return [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    except Exception:  # noqa: BLE001 - outside a Ray worker there is no assignment
        return []


def resolve_device(kind: str, role: str) -> torch.device:
    """`kind` 'cpu', 'cuda' (the GPU Ray assigned, else cuda:0) or 'auto' (cuda when this process sees a
    GPU, else cpu) -> a concrete device, made current and logged."""
    if kind not in DEVICE_KINDS:
        raise ValueError(f"device {kind!r} for {role}: expected one of {DEVICE_KINDS}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        print(f"[flowray] {role}: device cpu", flush=True)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{role} was given a GPU but CUDA is not available (CUDA_VISIBLE_DEVICES={visible!r})")
    assigned = _ray_gpu_ids()
    index = visible_index(assigned, visible)
    torch.cuda.set_device(index)
    print(f"[flowray] {role}: Ray GPU ids {assigned or 'none'}, CUDA_VISIBLE_DEVICES={visible!r} -> cuda:{index} "
          f"({torch.cuda.get_device_name(index)})", flush=True)
    return torch.device("cuda", index)
