"""Weight sync in buckets: the trainable weights travel in their own dtype (bf16 stays bf16), packed
into flat buckets of at most `BUCKET_BYTES`, each with a cheap checksum that the receiver verifies
before it loads the bucket into its live parameters.

Both sides derive the same bucket plan from the same trainable-weight layout (sorted names, one dtype
per bucket, as DeepSpeed and verl bucket their weight broadcasts). A bucket is packed once on the sender
(the only copy it makes: under ZeRO-3 only that bucket's parameters are gathered), and a receiver copies
it straight into its parameters, so neither side ever holds more than one bucket beyond its weights.

The checksum is not cryptographic: it guards against corruption and mismatched layouts in transit
(bucket contents, sizes, and the names, shapes and dtypes of every tensor in it), at close to memory
bandwidth. `weights_digest` (sha256 over the whole model) stays for tests and debugging.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

BUCKET_BYTES = 64 << 20  # verl's and DeepSpeed's weight-broadcast buckets are tens to hundreds of MB
_CHUNK_WORDS = 4096  # checksum chunk: 32 KB of int64 words


class WeightIntegrityError(RuntimeError):
    """A received bucket does not match what the sender packed."""


@dataclass(frozen=True)
class BucketSpec:
    """One bucket: tensor names (sorted), their shapes, and the dtype they all share."""

    index: int
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype

    @property
    def numels(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @property
    def nbytes(self) -> int:
        return sum(self.numels) * _itemsize(self.dtype)

    def layout_hash(self) -> int:
        """A 63-bit hash of the names, shapes and dtype: two sides agree on the layout iff it is equal."""
        text = f"{self.index}|{self.dtype}|" + "|".join(f"{n}:{s}" for n, s in zip(self.names, self.shapes, strict=True))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1

    def describe(self) -> str:
        first, last = self.names[0], self.names[-1]
        span = first if first == last else f"{first} .. {last}"
        return f"bucket {self.index} ({len(self.names)} tensors, {self.dtype}: {span})"


@dataclass
class PackedBucket:
    """What travels through Ray's object store: the bucket's raw bytes (a numpy uint8 array, so Ray
    shares it zero-copy with every reader on the node) and its checksum."""

    spec: BucketSpec
    data: np.ndarray
    checksum: tuple[int, int]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def full_shape(t: torch.Tensor) -> tuple[int, ...]:
    """A tensor's full shape, also for a ZeRO-3 partitioned parameter (whose .shape is its empty shard)."""
    return tuple(getattr(t, "ds_shape", t.shape))


def plan_buckets(layout: dict[str, tuple[tuple[int, ...], torch.dtype]], bucket_bytes: int = BUCKET_BYTES) -> list[BucketSpec]:
    """Sorted names grouped into same-dtype buckets of at most `bucket_bytes` (a larger tensor alone)."""
    groups: list[list[str]] = []
    size, dtype = 0, None
    for name in sorted(layout):
        shape, dt = layout[name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * _itemsize(dt)
        if not groups or dt != dtype or size + nbytes > bucket_bytes:
            groups.append([])
            size, dtype = 0, dt
        groups[-1].append(name)
        size += nbytes
    return [
        BucketSpec(i, tuple(names), tuple(tuple(layout[n][0]) for n in names), layout[names[0]][1])
        for i, names in enumerate(groups)
    ]


def plan_for(tensors: dict[str, torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[BucketSpec]:
    """The bucket plan of a name -> tensor dict (live parameters, possibly ZeRO-3 partitioned)."""
    return plan_buckets({n: (full_shape(t), t.dtype) for n, t in tensors.items()}, bucket_bytes)


def pack(spec: BucketSpec, tensors: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """The bucket's tensors flattened into one new tensor of `spec.dtype` on `device` (cast where a
    source, such as an fp32 EMA kept on the host, has another dtype)."""
    flat = torch.empty(sum(spec.numels), dtype=spec.dtype, device=device)
    offset = 0
    for name, n in zip(spec.names, spec.numels, strict=True):
        flat[offset : offset + n].copy_(tensors[name].detach().reshape(-1))
        offset += n
    return flat


def checksum(flat: torch.Tensor) -> tuple[int, int]:
    """(wrapping sum of the 64-bit words, sum of 32 KB chunk sums weighted by chunk position): every
    changed word changes the first, moved chunks change the second. One pass at memory bandwidth."""
    raw = flat.reshape(-1).view(torch.uint8)
    whole = raw.numel() // 8 * 8
    words = raw[:whole].view(torch.int64)
    tail = int(raw[whole:].to(torch.int64).sum()) if whole < raw.numel() else 0
    full = words.numel() // _CHUNK_WORDS * _CHUNK_WORDS
    chunks = words[:full].view(-1, _CHUNK_WORDS).sum(dim=1)
    rest = words[full:].sum()
    total = int(chunks.sum() + rest) + tail
    weights = torch.arange(1, chunks.numel() + 1, dtype=torch.int64, device=chunks.device)
    positional = int((chunks * weights).sum()) + int(rest) * (chunks.numel() + 1) + tail * (chunks.numel() + 2)
    return _int64(total), _int64(positional + raw.numel())


def _int64(v: int) -> int:
    """`v` wrapped into the signed 64-bit range (so a checksum fits an int64 tensor)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def verify(spec: BucketSpec, flat: torch.Tensor, expected: tuple[int, int]) -> None:
    """Raise WeightIntegrityError naming the bucket and its tensors unless `flat` has the expected checksum."""
    got = checksum(flat)
    if tuple(got) != tuple(expected):
        raise WeightIntegrityError(
            f"weight sync: {spec.describe()} arrived corrupted (checksum {got} != sent {tuple(expected)}); "
            f"its tensors: {list(spec.names)}"
        )


def check_layout(spec: BucketSpec, live: dict[str, torch.Tensor]) -> None:
    """Raise WeightIntegrityError naming the first tensor of `spec` this side lacks or holds otherwise."""
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        t = live.get(name)
        if t is None or tuple(t.shape) != tuple(shape) or t.dtype != spec.dtype:
            own = "missing" if t is None else f"{tuple(t.shape)} {t.dtype}"
            raise WeightIntegrityError(
                f"weight sync: {spec.describe()} does not fit this policy: {name} sent as {tuple(shape)} "
                f"{spec.dtype}, held here as {own} (model.lora settings or precision differ?)"
            )


@torch.no_grad()
def unpack_into(spec: BucketSpec, flat: torch.Tensor, live: dict[str, torch.Tensor]) -> None:
    """Copy a received bucket into the live tensors (the load itself: no further copy)."""
    offset = 0
    for name, n in zip(spec.names, spec.numels, strict=True):
        t = live[name]
        t.copy_(flat[offset : offset + n].view(t.shape))
        offset += n


def to_packed(spec: BucketSpec, flat: torch.Tensor) -> PackedBucket:
    """A packed bucket for the object store (its bytes viewed, not copied, as numpy)."""
    return PackedBucket(spec, flat.view(torch.uint8).numpy(), checksum(flat))


def from_packed(bucket: PackedBucket) -> torch.Tensor:
    """The bucket's flat tensor, a view of the (possibly read-only, shared) numpy bytes: nothing is
    written to it, so the read-only warning does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(bucket.data).view(bucket.spec.dtype)


def plan_hash(specs: Iterable[BucketSpec]) -> int:
    """A 63-bit hash of a whole bucket plan (every bucket's layout, in order)."""
    text = ",".join(str(s.layout_hash()) for s in specs)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def sync_digest(specs: Iterable[BucketSpec], checksums: Iterable[tuple[int, int]]) -> str:
    """One short digest of a whole sync (layouts and checksums of every bucket): the learner's and each
    rollout actor's must be equal."""
    h = hashlib.blake2b(digest_size=16)
    for spec, c in zip(specs, checksums, strict=True):
        h.update(f"{spec.layout_hash()}:{c[0]}:{c[1]};".encode())
    return h.hexdigest()


def load_packed(buckets: Iterable[PackedBucket], live: dict[str, torch.Tensor]) -> str:
    """Verify and load packed buckets into `live` (every live tensor must be covered exactly once);
    returns the sync digest."""
    specs, sums, seen = [], [], set()
    for bucket in buckets:
        spec = bucket.spec
        check_layout(spec, live)
        flat = from_packed(bucket)
        verify(spec, flat, bucket.checksum)
        unpack_into(spec, flat, live)
        specs.append(spec)
        sums.append(tuple(bucket.checksum))
        seen.update(spec.names)
    if seen != set(live):
        raise WeightIntegrityError(f"weight sync: no bucket carried {sorted(set(live) - seen)[:5]}")
    return sync_digest(specs, sums)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A content hash of a weight dict (names, shapes and values): equal digests = equal values.

    Floating tensors are hashed as float32 (exact for bf16/fp16), so the learner's float32 export of
    bf16 weights and a rollout actor's bf16 copy of them agree."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu()
        t = (t.float() if t.is_floating_point() else t).contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
