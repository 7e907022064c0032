"""Chaos benchmark: the default preset for an hour under faults.

    python benchmarks/chaos.py [--minutes 60] [--seed 0] [--kills rollout=4,reward=4,learner=3,driver=3]
                               [--iterations N] [--output-dir runs/chaos] [--baseline DIR | --no-baseline]
                               [--write-docs] [--config PATH] [key=value ...]

Starts a private Ray head (benchmarks/ray_head.py: its own ports and temp dir, stopped at the end; other Ray
clusters of the host are left alone) and runs the driver as a subprocess, `python launch.py --address
<head> ...`, so that it can be killed and started again with `--resume`, as a user would. A seeded schedule
kills, at uniform random times in the first 85% of `--minutes`, a rollout actor, a reward actor, a learner
rank and the driver, each `--kills` times, for real: SIGKILL of the actor's process (its pid from Ray's
state API) or of the driver. A kill fires once the driver has printed an iteration line since the previous
kill (or since it started), so each lands mid-training, not in start-up, and, after an actor's kill, once
the head's Prometheus endpoint shows it on `flowray_actor_restarts` (or 120 s have passed: then it is
reported as not counted); one not reached before the run ends is reported as not fired. A learner rank's death stops the driver (the data-parallel group cannot
continue); the benchmark then resumes it, as it does after killing the driver. `--iterations` defaults to
what fills `--minutes` undisturbed at `--seconds-per-iteration`.

At the end (benchmarks/chaos_report.py) it checks and reports: the kills of each kind; iterations done,
groups sampled, trained, resampled and redone after resumes; every group trained exactly once (the final
metrics.jsonl: iterations 0..N-1 once each, every group index once per iteration, each sampled with the
iteration's policy version); no reward counted twice into a trained sample (every image of an iteration
scored once or marked unscored, never twice; the pools' ignored duplicate answers; each iteration's reward
equal to the undisturbed run's); the resident memory (RSS) of every long-lived process (the driver, each
actor, the head's raylet and GCS) at the start and the end; the restart counters the run exported
(`flowray_actor_restarts`, `flowray_run_resumes`, read from the head's Prometheus endpoint); and the paired
evaluation of the final policy against an undisturbed run of the same seed (cluster/evaluation.py
`compare_evaluations`), with whether the final weights are bit-identical.

Bit-identical is expected in synchronous mode whenever every fault was recovered by redoing work
deterministically: a rollout actor's groups are resampled with their seeds, a reward actor's requests
resubmitted to a deterministic scorer, and a learner rank's or the driver's death resumed from a checkpoint
(exact, as tests/test_reliability.py checks). It is not expected once an image went unscored (a timed-out
request: its group trains without it) or in asynchronous mode (a resampled group may meet newer weights).

Writes <output-dir>/chaos_report.json and <output-dir>/chaos_report.md; `--write-docs` puts the table into
docs/benchmarks.md between the CHAOS markers (benchmarks/readme_section.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
from chaos_report import build_report, markdown, write_docs  # noqa: E402
from ray_head import RayHead, ray_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KINDS = ("rollout", "reward", "learner", "driver")
DEFAULT_KILLS = {"rollout": 4, "reward": 4, "learner": 3, "driver": 3}
PROGRESS = re.compile(r"^\[it (\d+)/(\d+)\]", re.M)  # cluster/metrics.py progress_line
COUNTED_WITHIN_S = 120.0  # the driver reads the restarts every 5 s, Ray exports every ~5-10 s: room for a loaded host
RESTART_METRICS = re.compile(r"^ray_(flowray_actor_restarts|flowray_run_resumes)\{([^}]*)\} ([0-9.e+-]+)$", re.M)


@dataclass
class Kill:
    at: float  # seconds after the run started
    kind: str
    fired_at: float | None = None
    target: str = ""
    pid: int | None = None
    after_iteration: int | None = None  # the driver's last printed iteration when it fired
    restarts_before: int | None = None  # Ray's restart count of the target actor before the kill
    counted_after: float | None = None  # seconds until `flowray_actor_restarts` showed it
    counted: str | None = None  # rollout and reward kills: "shown", "not shown" (in 120 s), "driver ended first"


def schedule(kills: dict[str, int], seconds: float, seed: int) -> list[Kill]:
    """Each kind's kills at uniform times in [5%, 85%] of the duration, seeded; the last 15% lets the run
    finish and evaluate."""
    rng = random.Random(seed)
    events = [Kill(rng.uniform(0.05 * seconds, 0.85 * seconds), kind) for kind, n in kills.items() for _ in range(n)]
    return sorted(events, key=lambda e: e.at)


def parse_kills(text: str) -> dict[str, int]:
    out = dict.fromkeys(KINDS, 0)
    for part in filter(None, text.split(",")):
        kind, _, n = part.partition("=")
        if kind not in KINDS or not n.isdigit():
            raise SystemExit(f"--kills {text!r}: expected kind=count with kinds {', '.join(KINDS)}")
        out[kind] = int(n)
    return out


class Driver:
    """One `python launch.py` process; its output goes to logs/<chaos or undisturbed>_<n>.log."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]):
        self.cmd, self.log_path = cmd, log
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.started = time.monotonic()
        self.killed_by: str | None = None  # "driver" or "learner": the planned cause of its exit
        self.gate = 0  # progress lines printed when the last kill fired
        self.last_progress = time.monotonic()
        self._seen = 0

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def progress(self) -> list[int]:
        """The iterations this process has finished, in the order it printed them."""
        found = [int(m.group(1)) for m in PROGRESS.finditer(self.text())]
        if len(found) > self._seen:
            self._seen, self.last_progress = len(found), time.monotonic()
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def rss_sample(head: RayHead, driver: Driver | None, actors: list[dict], t: float) -> list[dict]:
    """RSS (MiB) of the driver, each alive actor and the head's raylet and GCS, at `t` seconds."""
    procs = [("driver", driver.proc.pid)] if driver is not None and driver.proc.poll() is None else []
    procs += [(a["name"], a["pid"]) for a in actors]
    for p in head.processes():
        try:
            name = p.name()
        except psutil.NoSuchProcess:
            continue
        if name in ("raylet", "gcs_server"):
            procs.append((name, p.pid))
    out = []
    for name, pid in procs:
        try:
            out.append({"t": round(t, 1), "process": name, "pid": pid,
                        "rss_mib": round(psutil.Process(pid).memory_info().rss / 2**20, 1)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def restart_counters(head: RayHead) -> dict[str, float]:
    """`flowray_actor_restarts{actor=...}` and `flowray_run_resumes` as the head's Prometheus endpoint shows them."""
    try:
        text = urllib.request.urlopen(head.metrics_url, timeout=10).read().decode()
    except OSError:
        return {}
    out = {}
    for name, labels, value in RESTART_METRICS.findall(text):
        actor = re.search(r'actor="([^"]+)"', labels)
        out[f"{name}/{actor.group(1)}" if actor else name] = float(value)
    return out


class ChaosRun:
    """The faulted run: drivers started and resumed, kills fired, memory and counters sampled."""

    def __init__(self, args, head: RayHead, out: Path, kills: list[Kill]):
        self.args, self.head, self.out, self.pending = args, head, out, list(kills)
        self.fired: list[Kill] = []
        self.exits: list[dict] = []  # every driver process's end: rc, planned cause or error tail
        self.rss: list[dict] = []
        self.counters: dict[str, float] = {}  # the largest value each restart counter reached
        self.rng = random.Random(args.seed + 1)  # which actor of a kind dies: its own stream
        self.awaiting: Kill | None = None  # an actor kill not yet seen on the restart counters
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def driver(self, run_dir: Path, resume: bool, tag: str) -> Driver:
        cmd = [sys.executable, "launch.py", "--address", self.head.address, "--output-dir", str(run_dir),
               "--iterations", str(self.args.iterations), *(["--config", self.args.config] if self.args.config else []),
               *self.args.overrides, *(["--resume"] if resume else [])]
        n = len(list(self.logs.glob(f"{tag}_*.log")))
        print(f"[chaos] {'resuming' if resume else 'starting'} the {tag} driver ({tag}_{n}.log)", flush=True)
        return Driver(cmd, self.logs / f"{tag}_{n}.log", ray_env())

    def fire(self, kill: Kill, driver: Driver, now: float) -> bool:
        """Kill the target of `kill` now; False when there is none alive yet (tried again later)."""
        progress = driver.progress()
        if kill.kind == "driver":
            kill.target, kill.pid = "driver", driver.proc.pid
            driver.killed_by = "driver"
            os.kill(driver.proc.pid, signal.SIGKILL)
        else:
            prefix = f"{kill.kind}-"
            alive = sorted((a for a in self.head.alive_actors() if a["name"].startswith(prefix)), key=lambda a: a["name"])
            if not alive:
                return False
            target = self.rng.choice(alive)
            kill.target, kill.pid, kill.restarts_before = target["name"], target["pid"], target["num_restarts"]
            if kill.kind == "learner":
                driver.killed_by = "learner"
            try:
                os.kill(target["pid"], signal.SIGKILL)
            except ProcessLookupError:
                return False
        kill.fired_at, kill.after_iteration = round(now, 1), (progress[-1] if progress else None)
        driver.gate = len(progress)
        self.fired.append(kill)
        self.awaiting = kill if kill.kind in ("rollout", "reward") else None
        print(f"[chaos] {now:7.0f} s: killed {kill.target} (pid {kill.pid}) after iteration {kill.after_iteration}",
              flush=True)
        return True

    def counted(self, now: float) -> bool:
        """Whether the last actor kill shows on `flowray_actor_restarts` (polled while it does not; given up
        after COUNTED_WITHIN_S, or when its driver ended, since the counters are that driver's)."""
        kill = self.awaiting
        if kill is None:
            return True
        shown = restart_counters(self.head).get(f"flowray_actor_restarts/{kill.target}", 0.0)
        if shown >= (kill.restarts_before or 0) + 1:
            kill.counted, kill.counted_after = "shown", round(now - kill.fired_at, 1)
        elif now - kill.fired_at < COUNTED_WITHIN_S:
            return False
        else:
            kill.counted = "not shown"
        self.awaiting = None
        return True

    def sample(self, driver: Driver | None, now: float) -> None:
        self.rss += rss_sample(self.head, driver, self.head.alive_actors(), now)
        for key, value in restart_counters(self.head).items():
            self.counters[key] = max(self.counters.get(key, 0.0), value)

    def run(self, run_dir: Path) -> float:
        """Train to the end under the schedule; returns the wall seconds."""
        start = time.monotonic()
        driver, next_sample = self.driver(run_dir, resume=False, tag="chaos"), 0.0
        try:
            return self._loop(driver, run_dir, start, next_sample)
        finally:
            self.current.stop()  # an error or Ctrl-C here must not leave a driver running

    def _loop(self, driver: Driver, run_dir: Path, start: float, next_sample: float) -> float:
        self.current = driver
        while True:
            now = time.monotonic() - start
            rc = driver.proc.poll()
            if rc is not None:
                self._ended(driver, rc, now)
                if rc == 0:
                    break
                if len(self.exits) > self.args.max_restarts:
                    raise SystemExit(f"[chaos] the driver stopped {len(self.exits)} times; giving up (see {self.logs})")
                driver = self.current = self.driver(run_dir, resume=True, tag="chaos")
                continue
            if time.monotonic() - max(driver.started, driver.last_progress) > 60 * self.args.stall_minutes:
                print(f"[chaos] no progress line for {self.args.stall_minutes} min: killing the driver", flush=True)
                driver.killed_by = "stalled"
                driver.stop()
                continue
            if now >= next_sample:
                if driver.progress():  # memory once the driver trains (its actors are up); also the stall clock
                    self.sample(driver, now)
                next_sample = now + self.args.sample_seconds
            counted = self.counted(now)  # polled while the last actor kill is not shown yet
            if self.pending and now >= self.pending[0].at and len(driver.progress()) > driver.gate \
                    and driver.killed_by is None and counted and self.fire(self.pending[0], driver, now):
                self.pending.pop(0)
            time.sleep(1.0)
        self.sample(None, time.monotonic() - start)
        return time.monotonic() - start

    def _ended(self, driver: Driver, rc: int, now: float) -> None:
        driver.stop()
        if self.awaiting is not None:  # its restart counters ended with it
            self.awaiting.counted, self.awaiting = "driver ended first", None
        tail = driver.text().splitlines()[-15:]
        cause = "finished" if rc == 0 else driver.killed_by or "error"
        self.exits.append({"t": round(now, 1), "log": driver.log_path.name, "rc": rc, "cause": cause,
                           "tail": tail if cause in ("error", "stalled") else []})
        print(f"[chaos] {now:7.0f} s: driver exited rc={rc} ({cause})", flush=True)


def undisturbed(args, head: RayHead, run_dir: Path, logs: ChaosRun) -> float:
    """The same run with no faults, on the same head: the paired evaluation's reference."""
    start = time.monotonic()
    driver = logs.driver(run_dir, resume=False, tag="undisturbed")
    try:
        rc = driver.proc.wait()
    finally:
        driver.stop()
    if rc != 0:
        raise SystemExit(f"[chaos] the undisturbed run failed (rc {rc}); see {driver.log_path}")
    return time.monotonic() - start


def wait_for_baseline(run_dir: Path, iterations: int, poll_s: float = 30.0) -> None:
    """`--baseline` may name a run still in progress (an undisturbed run started beside this one, e.g.
    `--kills rollout=0,reward=0,learner=0,driver=0 --no-baseline`): wait for its final checkpoint and
    evaluation, saying so every few minutes."""
    final = [run_dir / "checkpoints" / f"iter_{iterations:06d}", run_dir / "eval.json"]
    waited = 0.0
    while not all(p.exists() for p in final):
        if waited % 300 < poll_s:
            print(f"[chaos] waiting for the baseline run {run_dir} to finish ({', '.join(p.name for p in final)})",
                  flush=True)
        time.sleep(poll_s)
        waited += poll_s


def cpus_for(args) -> int:
    from cluster.config import load_config
    from cluster.ray_init import cpu_demand

    cfg = load_config(args.config, list(args.overrides))
    return max(os.cpu_count() or 1, cpu_demand(cfg))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="the kill window (and, undisturbed, the run's length)")
    p.add_argument("--seed", type=int, default=0, help="the kill schedule's seed (the run's seed is the preset's)")
    p.add_argument("--kills", default=",".join(f"{k}={n}" for k, n in DEFAULT_KILLS.items()))
    p.add_argument("--iterations", type=int, help="default: --minutes of iterations at --seconds-per-iteration")
    p.add_argument("--seconds-per-iteration", type=float, default=3.0,
                   help="the default preset's pace here with its probes (docs/results.md: 480 in ~24.5 min)")
    p.add_argument("--output-dir", default="runs/chaos")
    p.add_argument("--baseline", help="an undisturbed run of the same config to compare with (default: run one)")
    p.add_argument("--no-baseline", action="store_true", help="skip the undisturbed run and the comparison")
    p.add_argument("--config", help="preset (default: configs/shapes_nft.yaml)")
    p.add_argument("--sample-seconds", type=float, default=15.0, help="RSS and counter sampling period")
    p.add_argument("--stall-minutes", type=float, default=15.0, help="kill a driver silent for this long")
    p.add_argument("--max-restarts", type=int, default=40, help="give up after this many driver exits")
    p.add_argument("--write-docs", action="store_true", help="the table into docs/benchmarks.md (CHAOS block)")
    p.add_argument("overrides", nargs="*", help="launch.py key=value overrides")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `with RayHead` stops the head
    given = list(argv if argv is not None else sys.argv[1:])
    if "--output-dir" in given:  # the command docs/benchmarks.md shows: no path of this machine
        del given[given.index("--output-dir"):given.index("--output-dir") + 2]
    if "--baseline" in given:
        given[given.index("--baseline") + 1] = "<undisturbed run dir>"
    args.iterations = args.iterations or max(2, round(60 * args.minutes / args.seconds_per_iteration))
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = schedule(parse_kills(args.kills), 60 * args.minutes, args.seed)
    print(f"[chaos] {args.iterations} iterations, {len(plan)} kills over {args.minutes:g} min "
          f"(seed {args.seed}); output {out}", flush=True)
    with RayHead(num_cpus=cpus_for(args), name="chaos") as head:
        chaos = ChaosRun(args, head, out, plan)
        seconds = chaos.run(out / "chaos")
        baseline = Path(args.baseline).resolve() if args.baseline else None
        base_seconds = None
        if baseline is not None:
            wait_for_baseline(baseline, args.iterations)
        if baseline is None and not args.no_baseline:
            baseline = out / "undisturbed"
            base_seconds = undisturbed(args, head, baseline, chaos)
    report = build_report(
        run_dir=out / "chaos", baseline=baseline, logs=sorted(chaos.logs.glob("chaos_*.log")),
        kills=[asdict(k) for k in chaos.fired], not_fired=[asdict(k) for k in chaos.pending], exits=chaos.exits,
        rss=chaos.rss, counters=chaos.counters,
        meta={"minutes": args.minutes, "seed": args.seed, "iterations": args.iterations, "seconds": round(seconds, 1),
              "undisturbed_seconds": None if base_seconds is None else round(base_seconds, 1),
              "command": " ".join(["python", "benchmarks/chaos.py", *given]),
              "load_average": os.getloadavg()})
    (out / "chaos_report.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "chaos_report.md").write_text(table + "\n")
    print(table, flush=True)
    if args.write_docs:
        print(f"[chaos] wrote {write_docs(table, report['meta']['command'])}", flush=True)
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(0 if report["checks"]["all_passed"] else 1)
