"""The preflight's findings (cluster/preflight.py): one `Check` per config key looked at, and the
`PreflightReport` that collects them and prints the summary `launch.py --dry-run` shows.

A module of its own so that the config checks (cluster/preflight_checks.py) and the cluster checks
(cluster/preflight_cluster.py) write into one report type without importing each other or the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "warn", "error"]


@dataclass(frozen=True)
class Check:
    """One preflight finding: what was checked (a config key), its status and a sentence for a human."""

    key: str
    status: Status
    message: str


@dataclass
class PreflightReport:
    """Every check of one config; `ok` is False when any check is an error."""

    checks: list[Check] = field(default_factory=list)
    resources_source: str = ""
    grids: dict[str, list[float]] = field(default_factory=dict)  # 'train' / 'eval' -> sigma grid
    memory: list[str] = field(default_factory=list)  # the memory plan's breakdown, per actor kind

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Check]:
        return [c for c in self.checks if c.status == "error"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def add(self, key: str, status: Status, message: str) -> None:
        self.checks.append(Check(key, status, message))

    def find(self, key: str) -> list[Check]:
        """Checks whose key starts with `key` (e.g. 'data.train_prompts', 'rewards.scorers[0]')."""
        return [c for c in self.checks if c.key.startswith(key)]

    def summary(self) -> str:
        lines = [f"sigmas {name}: " + ",".join(f"{v:.4f}" for v in grid) for name, grid in self.grids.items()]
        lines += self.memory
        lines += [f"[{c.status.upper():5}] {c.key}: {c.message}" for c in self.checks]
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"preflight {verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)

    __str__ = summary
