"""Configs written before the `algorithm:` section still load.

Until 2026-12 a preset named its algorithm with `sampling.strategy` and `learner.loss`, and the settings of
one algorithm sat among the shared ones (`sampling.window_size`, `learner.nft_beta`, ...). Each unit
declares where its settings used to live (`legacy_keys`) and which strategy and loss named it
(`legacy_selector`), so an old preset, an old run's config.yaml or a checkpoint's config is read into the
new layout with a notice, and an old key set beside a new `algorithm:` section is an error naming its new
place. Nothing here names an algorithm: the units say it.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import TypeAdapter, ValidationError

from algorithms import ALGORITHMS

OLD_SELECTOR_DEFAULTS = {"sampling.strategy": "flow_grpo", "learner.loss": "grpo_clip"}


def _has(data: dict, dotted: str) -> bool:
    section, key = dotted.split(".", 1)
    part = data.get(section)
    return isinstance(part, dict) and key in part


def _pop(data: dict, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return data[section].pop(key)


def _legacy_units() -> list[type]:
    """The units an old layout may name (not those added with the `algorithm` section)."""
    return [cls for cls in ALGORITHMS.values() if cls.legacy_layout]


def _all_legacy_keys() -> dict[str, list[type]]:
    owners: dict[str, list[type]] = {}
    for cls in _legacy_units():
        for old in cls.legacy_keys:
            owners.setdefault(old, []).append(cls)
    return owners


def _is_default(field, value: Any) -> bool:
    try:
        return TypeAdapter(field.annotation).validate_python(value) == field.get_default(call_default_factory=True)
    except ValidationError:
        return False


def migrate(data: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """`data` in the current layout, and a notice when it was in the old one (None otherwise).
    Raises ValueError naming the key when an old key cannot be placed."""
    owners = _all_legacy_keys()
    selectors = [k for k in OLD_SELECTOR_DEFAULTS if _has(data, k)]
    present = [k for k in owners if _has(data, k)]
    if "algorithm" in data:
        for key in selectors + present:
            new = f"algorithm.{owners[key][0].legacy_keys[key]}" if key in owners else "algorithm.name"
            raise ValueError(f"{key} belongs to the layout before the `algorithm` section: set {new} instead")
        return data, None
    if not selectors and not present:
        return data, None
    data = copy.deepcopy(data)
    old = dict(OLD_SELECTOR_DEFAULTS)
    old.update({key: _pop(data, key) for key in selectors})
    chosen = [cls for cls in _legacy_units() if cls.legacy_selector() == old]
    if len(chosen) != 1:
        raise ValueError(f"sampling.strategy {old['sampling.strategy']!r} with learner.loss {old['learner.loss']!r} "
                         f"names no algorithm; set `algorithm.name` to one of {sorted(ALGORITHMS)}")
    cls = chosen[0]
    section: dict[str, Any] = {"name": cls.model_fields["name"].default}
    for key in present:
        value = _pop(data, key)
        if key in cls.legacy_keys:
            section[cls.legacy_keys[key]] = value
            continue
        other = owners[key][0]
        field = other.model_fields[other.legacy_keys[key]]
        # A dumped config (config.yaml, JSON mode) holds every key at its default, tuples as lists: compare typed.
        if not _is_default(field, value):
            raise ValueError(f"{key} does not apply to algorithm {section['name']!r}: remove it")
    data["algorithm"] = section
    moved = ", ".join(f"{k} -> algorithm.{cls.legacy_keys[k]}" for k in present if k in cls.legacy_keys)
    return data, (f"read in the layout before the `algorithm` section: algorithm.name = {section['name']!r}"
                  + (f"; {moved}" if moved else ""))
