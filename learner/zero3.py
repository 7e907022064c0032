"""Reading and restoring weights that ZeRO-3 partitions across the learner ranks.

Under ZeRO-3 every rank holds a slice of each parameter; `deepspeed.zero.GatheredParameters` rebuilds
the whole tensors and is a collective: every rank of the data-parallel group must enter it, in the
same order, or the ranks that did wait forever (DeepSpeed's docs on GatheredParameters). Gathering
the whole model at once would also put a full copy on every rank's device (24 GB for a 12B bf16
transformer); gathering one submodule at a time (checkpoints) or one weight-sync bucket at a time
(learner/worker.py) bounds that to the largest submodule or bucket.
"""

from __future__ import annotations

import torch


def gathered_state_dict(module: torch.nn.Module, *, trainable_only: bool, keep: bool) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with partitioned parameters gathered, one submodule at a time, and copied
    to CPU (in their own dtype). Every rank must call this; only the rank with `keep` collects the
    copies (the others take part in the gathers and get {}). `trainable_only` skips frozen parameters
    and buffers (LoRA: the adapters are all that is exported)."""
    import deepspeed

    out: dict[str, torch.Tensor] = {}
    for prefix, sub in module.named_modules():
        own = [(n, p) for n, p in sub.named_parameters(recurse=False) if p.requires_grad or not trainable_only]
        if not own:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in own]):
            if keep:
                for name, p in own:
                    out[f"{prefix}.{name}" if prefix else name] = p.detach().to("cpu", copy=True).contiguous()
    if keep and not trainable_only:  # buffers are never partitioned: take them from the plain state_dict
        for name, t in module.state_dict().items():
            out.setdefault(name, t.detach().to("cpu", copy=True).contiguous())
    return out


def gathered(params: list[torch.Tensor]):
    """A context in which these partitioned parameters hold their full values (a collective: every
    rank enters it with the same parameters, in the same order); tensors ZeRO-3 does not partition
    (buffers) pass through."""
    import deepspeed

    return deepspeed.zero.GatheredParameters([p for p in params if hasattr(p, "ds_id")])
