"""Seeds derived from a run seed and named parts (iteration, group, rank, ...), stable across processes.

Everything random in a run draws from a torch.Generator seeded here, so a group sampled again after an
actor restart, or a run resumed from a checkpoint, sees exactly the same random numbers.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from the parts (sha256, so unlike hash() it is the same in every process)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
