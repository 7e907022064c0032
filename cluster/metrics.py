"""Run metrics: metrics.jsonl (every key, every iteration), TensorBoard scalars, Ray dashboard gauges
(ray.util.metrics, exported as ray_flowray_*; docs/grafana/flowray.json charts them), and the terminal's
progress: a line every logging.log_every iterations with the pace and the ETA, and a few lines per
evaluation (`Progress`).

Besides the metrics, each metrics.jsonl row records which groups the iteration trained (`groups`, their
indices in the iteration; a group's id is (iteration, index), its seed derived from both), the policy
version each was sampled with (`policy_versions`), and the groups it sampled again after losing them to a
rollout actor's death (`groups_resampled`), so a run's rows show every group trained exactly once
(benchmarks/chaos.py checks them). A resumed run drops the rows after its checkpoint (`drop_from`) and
appends a line to resumes.jsonl (`count_resume`)."""

from __future__ import annotations

import io
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Namespaced metric key -> Ray gauge name shown on the dashboard / Prometheus endpoint.
DASHBOARD_GAUGES = {
    "reward/mean": "flowray_reward_mean",
    "reward/std": "flowray_reward_std",
    "reward/unscored_images": "flowray_reward_unscored_images",
    "reward/accuracy": "flowray_reward_accuracy",
    "eval/overall": "flowray_eval_accuracy",
    "charts/images_per_s": "flowray_images_per_s",
    "charts/transitions_per_s": "flowray_transitions_per_s",
    "time/step": "flowray_step_seconds",
    "time/sync": "flowray_sync_seconds",
    "learner/staleness_max": "flowray_staleness",
    "charts/policy_version": "flowray_policy_version",
}
# Keys with a label in their name -> (Ray gauge, its tag keys): one series per scorer or prompt tag.
TAGGED_GAUGES = {
    "flowray_reward_by_tag": (re.compile(r"reward/tag/(?P<tag>[^/]+)"), ("tag",)),
    "flowray_reward_unscored_share": (re.compile(r"reward/(?P<scorer>[^/]+)/unscored_share_window"), ("scorer",)),
    # eval/<tag> and probe/<tag> are accuracies only for the prompts' tags (probe/<scorer> is a reward)
    "flowray_accuracy": (re.compile(r"(?P<source>eval|probe)/(?P<tag>[^/]+)"), ("source", "tag")),
}
RESUMES = "resumes.jsonl"  # one line per --resume of the run in this folder (`count_resume`)
# Ray (2.60, measured) drops a gauge from its Prometheus endpoint ~20 s after it was last set (two export
# intervals), so a value set once (an evaluation's accuracy, the resume count) or between slow iterations
# vanished from the dashboard: the logger sets every gauge again at this period while it is open.
HOLD_GAUGES_S = 5.0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class MetricsLogger:
    """`wandb`: None, or the settings of an optional Weights & Biases run ({"project", "mode", "name",
    "config"}); it receives the same scalars and images as TensorBoard."""

    def __init__(self, output_dir: str | Path, *, tensorboard: bool = True, ray_gauges: bool = True,
                 wandb: dict | None = None, accuracy_tags: tuple[str, ...] = ()):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = (self.dir / "metrics.jsonl").open("a", encoding="utf-8")
        # The TensorBoard writer opens at the first `log`, so that a resumed run, which calls
        # `drop_from` first, writes one event file (with its purge step), not an empty one as well.
        self.tensorboard, self.tb, self._purge_step = tensorboard, None, None
        self.gauges, self.tagged, self.restarts, self.resumes = {}, {}, None, None
        self._held: dict[tuple, tuple] = {}  # (gauge name, tags) -> (gauge, value, tags): what `_hold` sets again
        self._lock, self._closed = threading.Lock(), threading.Event()
        # {actor name: Ray's restart count} (common/actor_metrics.py `actor_restarts`), read by `_hold` too, so a
        # restart shows within seconds also while an evaluation holds the loop for minutes
        self.restart_source: Callable[[], dict[str, int]] | None = None
        if ray_gauges:
            from ray.util.metrics import Gauge

            self.gauges = {key: Gauge(name, description=f"flowray {key}") for key, name in DASHBOARD_GAUGES.items()}
            self.tagged = {name: (pattern, Gauge(name, description=f"flowray {pattern.pattern}", tag_keys=keys))
                           for name, (pattern, keys) in TAGGED_GAUGES.items()}
            keys = ("actor", "role")
            self.restarts = Gauge("flowray_actor_restarts", description="Times Ray restarted each actor of the "
                                  "run (this driver's actors)", tag_keys=keys)
            self.resumes = Gauge("flowray_run_resumes", description="Times the run was resumed (--resume)")
            self._set(self.resumes, float(self._resume_count()))
            threading.Thread(target=self._hold, daemon=True, name="flowray gauges").start()
        self.accuracy_tags = {*accuracy_tags, "overall"}
        self.start = time.time()
        self.logged_at: deque[float] = deque(maxlen=11)  # the last `log` calls: the pace of 10 iterations
        self.wandb = _wandb_run(self.dir, wandb) if wandb else None

    def _writer(self):
        """The open TensorBoard writer (None when disabled), opened on first use."""
        if self.tensorboard and self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=self._purge_step)
        return self.tb

    def drop_from(self, iteration: int) -> int:
        """Forget what was logged for iterations >= `iteration` (a resumed run redoes them after its
        checkpoint): those metrics.jsonl rows are removed, and TensorBoard is told to hide its events at
        those steps (event files are append-only; `purge_step` marks them stale for every reader).
        Returns how many metrics.jsonl rows were dropped."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self._purge_step = iteration
        self.jsonl.close()
        path = self.dir / "metrics.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("iteration", -1) < iteration]
        path.write_text("".join(kept), encoding="utf-8")
        self.jsonl = path.open("a", encoding="utf-8")
        return len(lines) - len(kept)

    def log(self, iteration: int, metrics: dict, **extra) -> None:
        record = {"iteration": iteration, "time": round(time.time() - self.start, 3), **metrics, **extra}
        self.jsonl.write(json.dumps(record, default=_jsonable) + "\n")
        self.jsonl.flush()
        self.log_scalars(metrics, iteration)
        self.logged_at.append(time.monotonic())

    def _set(self, gauge, value: float, tags: dict | None = None) -> None:
        gauge.set(value, tags=tags)
        with self._lock:
            self._held[(gauge, tuple(sorted((tags or {}).items())))] = (gauge, value, tags)

    def _hold(self) -> None:
        """Set every gauge again to its last value every HOLD_GAUGES_S until `close` (see HOLD_GAUGES_S)."""
        while not self._closed.wait(HOLD_GAUGES_S):
            if self.restart_source is not None:
                self.set_actor_restarts(self.restart_source())
            with self._lock:
                held = list(self._held.values())
            for gauge, value, tags in held:
                gauge.set(value, tags=tags)

    def set_actor_restarts(self, restarts: dict[str, int]) -> None:
        """`flowray_actor_restarts{actor, role}` from {actor name: Ray's restart count} (common/actor_metrics.py
        `actor_restarts`); the role is the name's prefix (rollout-0 -> rollout, reward-<scorer>-0 -> reward)."""
        if self.restarts is not None:
            for name, count in restarts.items():
                self._set(self.restarts, float(count), {"actor": name, "role": name.split("-", 1)[0]})

    def _resume_count(self) -> int:
        path = self.dir / RESUMES
        return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0

    def count_resume(self, iteration: int, checkpoint: str | None) -> int:
        """Record a --resume of this run (resumes.jsonl: when, from which checkpoint; None: there was none
        yet, so it started again from iteration 0) and return how many there have been; a fresh run into the
        folder archives the file with the rest of the old run."""
        with (self.dir / RESUMES).open("a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), "iteration": iteration, "checkpoint": checkpoint}) + "\n")
        count = self._resume_count()
        if self.resumes is not None:
            self._set(self.resumes, float(count))
        return count

    def seconds_per_iteration(self) -> float | None:
        """Mean wall time of the recent iterations (up to 10; everything between two `log` calls: probes,
        evaluations and checkpoints included, as an ETA must count them); None before two."""
        t = self.logged_at
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None

    def log_scalars(self, metrics: dict, step: int) -> None:
        """Finite scalars to TensorBoard, W&B and the dashboard gauges (not metrics.jsonl: `log` writes it)."""
        tb = self._writer()
        finite = {k: float(v) for k, v in metrics.items() if _finite(v)}
        for key, value in finite.items():
            if tb is not None:
                tb.add_scalar(key, value, step)
            if key in self.gauges:
                self._set(self.gauges[key], value)
            for name, (pattern, gauge) in self.tagged.items():
                m = pattern.fullmatch(key)
                if m and (name != "flowray_accuracy" or m.group("tag") in self.accuracy_tags):
                    self._set(gauge, value, m.groupdict())
        if self.wandb is not None and finite:
            self.wandb.log(finite, step=step)

    def log_image(self, key: str, image, step: int) -> None:
        """A uint8 [H, W, 3] picture (the probe grid) to TensorBoard and W&B."""
        tb = self._writer()
        if tb is not None:
            tb.add_image(key, image, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Image(image)}, step=step)

    def log_video(self, key: str, frames: Sequence[np.ndarray], step: int, fps: float = 8.0) -> None:
        """uint8 [H, W, 3] pictures, one per video frame (the probe's videos), as an animated GIF (`fps` as the
        evaluation's GIFs) to TensorBoard and W&B. TensorBoard shows a GIF in an image summary as it moves; torch's
        `add_video` writes the same summary but encodes it with moviepy, which flowray does not depend on, so PIL
        encodes it here (cluster/plots.py `gif_bytes`)."""
        from cluster.plots import gif_bytes

        tb = self._writer()
        if tb is None and self.wandb is None:
            return
        gif = gif_bytes(frames, fps)
        if tb is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            h, w, c = frames[0].shape
            image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif)
            tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=key, image=image)]), step)
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Video(io.BytesIO(gif), format="gif")}, step=step)

    def close(self) -> None:
        self._closed.set()
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _wandb_run(folder: Path, settings: dict):
    """Start the optional W&B run (logging.wandb); its files go under <output_dir>/wandb."""
    try:
        import wandb
    except ImportError:
        raise ImportError("logging.wandb is true but wandb is not installed: pip install 'flowray[wandb]'") from None
    return wandb.init(project=settings["project"], mode=settings["mode"], name=settings.get("name"),
                      config=settings.get("config"), dir=str(folder), reinit="finish_previous")


def reward_by_tag(reward, tags: list, sizes: list[int]) -> dict:
    """`reward/tag/<tag>`: the mean finite reward of an iteration's images, per prompt tag (GenEval's
    category), so a run shows which categories it learns and which it trades away. `reward` holds the
    images of consecutive groups, `sizes[i]` of them with tag `tags[i]`; untagged groups are skipped."""
    import numpy as np

    reward = np.asarray(reward, dtype=np.float64)
    if sum(sizes) != len(reward):
        raise ValueError(f"reward_by_tag: group sizes add up to {sum(sizes)}, but there are {len(reward)} rewards")
    labels = np.repeat(np.asarray(["" if t is None else str(t) for t in tags], dtype=object), sizes)
    keep = np.isfinite(reward) & (labels != "")
    return {f"reward/tag/{t}": float(reward[keep & (labels == t)].mean()) for t in sorted(set(labels[keep]))}


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot log a {type(value).__name__}")


def duration(seconds: float) -> str:
    """`42 s`, `3m 05s`, `2h 07m`: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 100:
        return f"{s} s"
    return f"{s // 60}m {s % 60:02d}s" if s < 3600 else f"{s // 3600}h {s % 3600 // 60:02d}m"


def progress_line(iteration: int, total: int, m: dict, seconds_per_iteration: float | None = None) -> str:
    """`[it 3/60] reward 0.412±0.21 acc 0.38 kl 1.2e-03 clip 0.04 | 5.1 img/s | step 12.3s (roll 8.1 rew 0.2
    upd 3.6 sync 0.1) | 14.2 s/it, ETA 13m 40s`. `seconds_per_iteration`: the recent mean
    (MetricsLogger.seconds_per_iteration); without it, this iteration's step time."""

    def f(key: str, fmt: str) -> str:
        v = m.get(key)
        return format(v, fmt) if _finite(v) else "-"

    skipped = m.get("learner/skipped_steps")
    # a skipped step is news (a non-finite gradient): say it on the line people watch
    warning = f" | SKIPPED {skipped:.0f} optimizer step(s): gradient not finite" if _finite(skipped) and skipped else ""
    unscored = m.get("reward/unscored_images")  # failed scores are left out of training: say how many
    warning += f" | UNSCORED {unscored:.0f} image(s)" if _finite(unscored) and unscored else ""
    pace = seconds_per_iteration if _finite(seconds_per_iteration) else m.get("time/step")
    eta = f" | {pace:.1f} s/it, ETA {duration(pace * (total - iteration))}" if _finite(pace) else ""
    return (
        f"[it {iteration}/{total}] reward {f('reward/mean', '.3f')}±{f('reward/std', '.2f')} "
        f"acc {f('reward/accuracy', '.2f')} kl {f('policy/kl', '.1e')} clip {f('policy/clipfrac', '.2f')} "
        f"| {f('charts/images_per_s', '.1f')} img/s | step {f('time/step', '.1f')}s "
        f"(roll {f('time/rollout', '.1f')} rew {f('time/reward', '.1f')} upd {f('time/update', '.1f')} "
        f"sync {f('time/sync', '.2f')}){eta}{warning}"
    )


class Progress:
    """A few console lines for a job of `total` units (an evaluation's images): one at the start, one
    when at least `every_s` seconds and `every_frac` of the expected duration have passed since the last
    (a short log whatever the length), and one with the wall time at `finish`. `rate`: units per second
    of an earlier such job, the ETA while the count is not known (the images are on the workers);
    `clock`: injectable for tests."""

    def __init__(self, label: str, total: int, *, unit: str = "images", rate: float | None = None,
                 every_s: float = 10.0, every_frac: float = 0.25, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit, self.rate = label, total, unit, rate
        self.every_s, self.every_frac, self.clock = every_s, every_frac, clock
        self.start = self.last = clock()
        self.done: int | None = None  # units known to be done; None: not counted yet
        self.lock = threading.Lock()  # the heartbeat's thread and the counting one
        eta = self.eta(self.start)
        self.say(f"{total} {unit} to do" + (f", ETA ~{duration(eta)}" if eta is not None else ""))

    def say(self, text: str) -> None:
        print(f"[flowray] {self.label}: {text}", flush=True)

    def eta(self, now: float) -> float | None:
        elapsed = now - self.start
        if self.done:
            return (self.total - self.done) * elapsed / self.done
        return max(0.0, self.total / self.rate - elapsed) if self.rate else None

    def update(self, done: int | None = None) -> None:
        """`done` units are done (None: no news, the heartbeat); prints a line when one is due."""
        with self.lock:
            self.done = self.done if done is None else done
            now = self.clock()
            eta = self.eta(now)
            # a share of the expected duration; unknown: as long as all before (lines at 10, 20, 40 s...)
            interval = self.last - self.start if eta is None else self.every_frac * (now - self.start + eta)
            if now - self.last < max(self.every_s, interval):
                return
            self.last = now
            # "~": an earlier job's pace, not this one's count
            eta_text = "" if eta is None else f", ETA {'' if self.done else '~'}{duration(eta)}"
            done = f"{self.total} {self.unit} under way" if self.done is None else \
                f"{self.done}/{self.total} {self.unit} ({self.done / max(1, self.total):.0%})"
            self.say(f"{done}, {duration(now - self.start)}{eta_text}")

    def finish(self) -> float:
        """Print the wall time; returns the rate (units per second), the next such job's ETA."""
        seconds = max(self.clock() - self.start, 1e-9)
        self.say(f"done, {self.total} {self.unit} in {duration(seconds)} ({self.total / seconds:.1f} {self.unit}/s)")
        return self.total / seconds

    @contextmanager
    def heartbeat(self, every_s: float = 1.0) -> Iterator[Progress]:
        """While inside, check every `every_s` seconds whether a line is due: a job whose count comes
        back only at its end (an evaluation through actors) still says how long it has run."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                self.update()

        thread = threading.Thread(target=beat, daemon=True, name=f"progress {self.label}")
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
