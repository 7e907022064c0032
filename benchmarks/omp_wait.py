"""OpenMP's wait policy under shared cores: one small 2-thread training step, timed with idle threads
spinning (the libgomp default) and sleeping (OMP_WAIT_POLICY=PASSIVE, what actors get: common/runtime_env.py),
with the machine to itself and beside busy processes.

    python benchmarks/omp_wait.py [--busy 0 2 4] [--repeats 3] [--steps 3000] [--threads 2]

Each case runs in a fresh interpreter (libgomp reads the policy once, at start-up); `--busy N` starts N
processes that spin on a core each for the length of the case. Prints the median seconds of each case and
the default/passive ratio per load, side by side.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys

STEP = """
import time, torch
torch.manual_seed(0)
torch.set_num_threads({threads})
x = torch.randn(64, 256)
w = torch.randn(256, 256, requires_grad=True)
start = time.perf_counter()
for _ in range({steps}):
    (x @ w).relu().sum().backward()
print(time.perf_counter() - start)
"""


def spin() -> None:
    while True:
        pass


def timed(policy: str | None, threads: int, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", STEP.format(threads=threads, steps=steps)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2, 4], help="busy processes beside the step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    print(f"{args.steps} steps of a 64x256 @ 256x256 forward and backward, {args.threads} threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print("| busy processes | spinning (default) s | sleeping (PASSIVE) s | default / passive |")
    print("|---|---|---|---|")
    for busy in args.busy:
        hogs = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
        for h in hogs:
            h.start()
        try:
            times = {policy: [] for policy in (None, "PASSIVE")}
            for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits both alike
                for policy in times:
                    times[policy].append(timed(policy, args.threads, args.steps))
        finally:
            for h in hogs:
                h.terminate()
        spin_s, passive_s = (statistics.median(times[k]) for k in (None, "PASSIVE"))
        print(f"| {busy} | {spin_s:.2f} | {passive_s:.2f} | {spin_s / passive_s:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
