"""OpenMP's wait policy under shared cores: one small 2-thread training step, timed with idle threads
spinning (the libgomp default) and sleeping (OMP_WAIT_POLICY=PASSIVE, what actors get: common/runtime_env.py),
with the machine to itself and beside busy processes.

    python benchmarks/omp_wait.py [--busy 0 2 4] [--repeats 3] [--steps 3000] [--threads 2] [--width 256]
                                  [--settings default OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=10000 ...]

Each case runs in a fresh interpreter (libgomp reads the policy once, at start-up); `--busy N` starts N
processes that spin on a core each for the length of the case. A setting is `default` (neither variable
set: libgomp spins about 300,000 times at a barrier, then sleeps) or NAME=VALUE pairs joined by commas.
Prints the median seconds of each case per load, and each setting's ratio to the first, side by side.

    python benchmarks/omp_wait.py --job 40 [--repeats 2] [--settings ...] [key=value ...]

times the main job itself instead (launch.py, its preset and overrides, N iterations, a 6-prompt final
evaluation, no base evaluation): the actors take the driver's OMP_WAIT_POLICY / GOMP_SPINCOUNT
(common/runtime_env.py), so each setting is one whole run; `default` there means the shipped PASSIVE, and
libgomp's own default is GOMP_SPINCOUNT=300000. Prints the median seconds per iteration after
the first 3 and the median update time, per setting, repeats interleaved.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEP = """
import time, torch
torch.manual_seed(0)
torch.set_num_threads({threads})
x = torch.randn(64, {width})
w = torch.randn({width}, {width}, requires_grad=True)
start = time.perf_counter()
for _ in range({steps}):
    (x @ w).relu().sum().backward()
print(time.perf_counter() - start)
"""


def spin() -> None:
    while True:
        pass


def environment(setting: str) -> dict[str, str]:
    """The process environment for one setting, with both of libgomp's wait variables cleared first."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if setting != "default":
        for pair in setting.split(","):
            name, _, value = pair.partition("=")
            if not value:
                raise SystemExit(f"--settings: {pair!r} is not NAME=VALUE")
            env[name] = value
    return env


def timed(setting: str, threads: int, steps: int, width: int) -> float:
    out = subprocess.run([sys.executable, "-c", STEP.format(threads=threads, steps=steps, width=width)],
                         env=environment(setting), capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def job_seconds(setting: str, iterations: int, overrides: list[str]) -> tuple[float, float]:
    """Median seconds per iteration and per update of one launch.py run, after 3 warm-up iterations."""
    with tempfile.TemporaryDirectory(prefix="omp_wait_") as out:
        cmd = [sys.executable, str(REPO / "launch.py"), f"iterations={iterations}", "logging.eval_base=false",
               "data.eval_num_prompts=6", "data.eval_images_per_tag=null", "data.eval_max_halfwidth=null",
               "data.eval_max_halfwidth_overall=null", "data.eval_train_images_per_tag=0",
               "logging.probe_every=0", f"logging.output_dir={out}", *overrides]
        subprocess.run(cmd, env=environment(setting), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    rows = [r for r in rows if "time/step" in r][3:]
    return statistics.median(r["time/step"] for r in rows), statistics.median(r["time/update"] for r in rows)


def main_job(args: argparse.Namespace) -> None:
    print(f"launch.py {' '.join(args.overrides)}: {args.job} iterations per run, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    times: dict[str, list[tuple[float, float]]] = {s: [] for s in args.settings}
    for _ in range(args.repeats):
        for setting in times:
            times[setting].append(job_seconds(setting, args.job, args.overrides))
            print(f"  {setting}: {times[setting][-1][0]:.2f} s/iteration, {times[setting][-1][1]:.2f} s/update",
                  flush=True)
    first = statistics.median(t for t, _ in times[args.settings[0]])
    print("| setting | s/iteration (runs) | median | s/update | / first |")
    print("|---|---|---|---|---|")
    for setting, ts in times.items():
        step = statistics.median(t for t, _ in ts)
        print(f"| {setting} | {', '.join(f'{t:.2f}' for t, _ in ts)} | {step:.2f} | "
              f"{statistics.median(u for _, u in ts):.2f} | {step / first:.2f}x |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2, 4], help="busy processes beside the step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=256, help="matrix width (the shapes transformer is 96 wide, 64 tokens)")
    p.add_argument("--settings", nargs="+", default=["default", "OMP_WAIT_POLICY=PASSIVE"],
                   help="'default' or NAME=VALUE[,NAME=VALUE]; ratios are to the first")
    p.add_argument("--job", type=int, default=0, help="time the main job for this many iterations instead")
    p.add_argument("overrides", nargs="*", help="launch.py overrides (with --job)")
    args = p.parse_args(argv)
    if args.job:
        return main_job(args)
    print(f"{args.steps} steps of a 64x{args.width} @ {args.width}x{args.width} forward and backward, "
          f"{args.threads} threads, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    first = args.settings[0]
    print("| busy processes | " + " | ".join(f"{s} s" for s in args.settings) + " | "
          + " | ".join(f"{s} / {first}" for s in args.settings[1:]) + " |")
    print("|---" * (2 * len(args.settings)) + "|")
    for busy in args.busy:
        hogs = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
        for h in hogs:
            h.start()
        try:
            times: dict[str, list[float]] = {s: [] for s in args.settings}
            for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits all alike
                for setting in times:
                    times[setting].append(timed(setting, args.threads, args.steps, args.width))
        finally:
            for h in hogs:
                h.terminate()
        med = {s: statistics.median(t) for s, t in times.items()}
        print(f"| {busy} | " + " | ".join(f"{med[s]:.2f}" for s in args.settings) + " | "
              + " | ".join(f"{med[s] / med[first]:.2f}x" for s in args.settings[1:]) + " |", flush=True)


if __name__ == "__main__":
    main()
