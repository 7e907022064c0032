"""The run's tolerance for unscored images (rewards/base.py): each scorer's share of images left unscored
over the last `rewards.unscored_window` iterations, and the error that stops the run past
`rewards.max_unscored_share`. The advantage stage leaves unscored images out whatever the share; this
stops a run whose signal has thinned out, naming the scorer and the share, instead of letting it train on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from rewards.base import ScoreResult


class UnscoredShareError(RuntimeError):
    """A scorer left more than rewards.max_unscored_share of its images unscored."""

    def __init__(self, scorer: str, share: float, limit: float, iterations: int, errors: Sequence[str]):
        last = f"; last error: {errors[-1]}" if errors else ""
        super().__init__(f"reward scorer {scorer!r} left {share:.1%} of its images unscored over the last {iterations} "
                         f"iteration(s), more than rewards.max_unscored_share={limit:g}{last}. Fix the scorer or its "
                         "service, or raise rewards.max_unscored_share")
        self.scorer, self.share = scorer, share


def counts(results: Sequence[ScoreResult]) -> tuple[int, int]:
    """(unscored images, images) over one scorer's results."""
    return sum(int((~r.valid).sum()) for r in results), sum(len(r) for r in results)


def window_share(history: Sequence[tuple[int, int]]) -> float:
    """Unscored images over images, summed over the window's iterations (0 when it saw no image)."""
    unscored, total = (sum(c[i] for c in history) for i in (0, 1))
    return unscored / total if total else 0.0


class UnscoredWindow:
    """The last `window` iterations' (unscored, images) per scorer. `watches`: scorers that are counted and
    logged but never stop the run (weight 0: their failures drop no trained image)."""

    def __init__(self, max_share: float, window: int, watches: Sequence[str] = ()):
        self.max_share, self.window, self.watches = max_share, window, set(watches)
        self.history: dict[str, deque[tuple[int, int]]] = {}
        self.errors: dict[str, list[str]] = {}

    @classmethod
    def from_config(cls, rewards) -> UnscoredWindow:
        """From the `rewards` section (rewards/config.py RewardsConfig)."""
        return cls(rewards.max_unscored_share, rewards.unscored_window, [s.name for s in rewards.scorers if s.weight == 0])

    def observe(self, results: Mapping[str, Sequence[ScoreResult]]) -> None:
        """Record one iteration's results by scorer; raise UnscoredShareError for the first scorer whose
        window share passes the limit."""
        for name, parts in results.items():
            history = self.history.setdefault(name, deque(maxlen=self.window))
            history.append(counts(parts))
            self.errors[name] = [e for r in parts for e in r.errors][-3:] or self.errors.get(name, [])
            share = window_share(history)
            if share > self.max_share and name not in self.watches:
                raise UnscoredShareError(name, share, self.max_share, len(history), self.errors[name])

    def shares(self) -> dict[str, float]:
        """reward/<scorer>/unscored_share_window: how close each scorer is to the limit."""
        return {f"reward/{name}/unscored_share_window": window_share(h) for name, h in self.history.items()}
