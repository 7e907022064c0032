"""Optimizer state on disk without pickle: tensors in safetensors, the rest as JSON.

A torch optimizer's state_dict (and DeepSpeed's ZeRO optimizers') is a nested structure of dicts,
lists, tuples, numbers and tensors. `flatten_state` stores every tensor under its path in a
safetensors file and the structure, with tensors replaced by references, in a JSON file, so loading
never unpickles anything. Values that are neither (DeepSpeed's LossScaler object) are marked "live":
on load they are taken from the optimizer being restored, which holds an equivalent one (fp32 and bf16
use a static scale of 1; an fp16 run restarts its dynamic loss scale). The files go into a checkpoint's
staging folder (cluster/checkpoints.py), which is renamed into place only when complete; each is
fsynced, and a failed write names the file (common/durable.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from common.durable import write_file

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INT_KEYS = "__int_keys__"
_LIVE = "__live__"


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    """Replace tensors by {"__tensor__": key} (collected in `tensors`); keep JSON-able values."""
    if torch.is_tensor(obj):
        tensors[path] = obj.detach().cpu().contiguous()
        return {_TENSOR: path}
    if isinstance(obj, dict):
        int_keys = all(isinstance(k, int) for k in obj) and bool(obj)
        if not int_keys and not all(isinstance(k, str) for k in obj):
            raise TypeError(f"{path}: dict keys must be all str or all int, got {list(obj)[:5]}")
        out = {str(k): flatten_state(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {_INT_KEYS: out} if int_keys else out
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return {_LIVE: type(obj).__name__}


def _child(live: Any, key: Any) -> Any:
    try:
        return live[key]
    except (KeyError, IndexError, TypeError):
        return None


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor], live: Any = None) -> Any:
    """Rebuild the structure; "live" values come from `live`, the restoring optimizer's own state_dict."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _LIVE in obj:
            if live is None:
                raise ValueError(f"checkpoint holds a {obj[_LIVE]} that only the live optimizer can supply")
            return live
        if _TUPLE in obj:
            return tuple(unflatten_state(v, tensors, _child(live, i)) for i, v in enumerate(obj[_TUPLE]))
        if _INT_KEYS in obj:
            return {int(k): unflatten_state(v, tensors, _child(live, int(k))) for k, v in obj[_INT_KEYS].items()}
        return {k: unflatten_state(v, tensors, _child(live, k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors, _child(live, i)) for i, v in enumerate(obj)]
    return obj


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """A safetensors file, fsynced; returns its digest (a failed write: CheckpointError naming it)."""
    return write_file(Path(path), lambda p: save_file(tensors, str(p)))


def save_optimizer_state(state: dict, prefix: Path, extra: dict | None = None) -> dict[str, dict]:
    """Write `prefix`.safetensors and `prefix`.json; returns {file name: digest} for the manifest."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {"state": flatten_state(state, tensors), "extra": extra or {}}
    prefix = Path(prefix)
    data, meta = prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")
    return {data.name: save_tensors(data, tensors),
            meta.name: write_file(meta, lambda p: p.write_text(json.dumps(skeleton)))}


def load_optimizer_state(prefix: Path, live: dict | None = None) -> tuple[dict, dict]:
    """Read what `save_optimizer_state` wrote -> (state, extra); `live` is the restoring optimizer's
    current state_dict. A missing or damaged file is an error naming it."""
    prefix = Path(prefix)
    meta, data = prefix.with_suffix(".json"), prefix.with_suffix(".safetensors")
    for f in (meta, data):
        if not f.is_file():
            raise FileNotFoundError(f"optimizer checkpoint file {f} is missing")
    try:
        skeleton = json.loads(meta.read_text())
        tensors = load_file(str(data))
        return unflatten_state(skeleton["state"], tensors, live), skeleton.get("extra", {})
    except Exception as err:  # json, safetensors and key errors alike mean a damaged checkpoint
        raise ValueError(f"optimizer checkpoint {prefix} is unreadable or truncated: {err}") from None


def load_into_optimizer(optimizer, state: dict, rank: int, world_size: int) -> None:
    """Restore one rank's optimizer state. DeepSpeed's ZeRO and bf16 optimizers take a list with one
    state dict per data-parallel rank and read entry `rank` (stage_1_and_2.py `_load_legacy_checkpoint`,
    stage3.py `load_state_dict`); each rank saved only its own partition, so the list holds just that
    one. The fp32 master partitions come from the checkpoint, not from the (bf16) model weights, so a
    resumed run continues bit-exactly. A plain torch optimizer (ZeRO-0 in fp32) takes the dict."""
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    if isinstance(optimizer, ZeROOptimizer):
        per_rank: list = [None] * world_size
        per_rank[rank] = state
        optimizer.load_state_dict(per_rank, load_optimizer_states=True, load_from_fp32_weights=True)
    else:
        optimizer.load_state_dict(state)
