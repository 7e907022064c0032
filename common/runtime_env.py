"""The environment every Ray process of a run starts with: rollout actors, learner ranks (cluster/actors.py),
reward actors (rewards/pool.py) and preflight's per-node model checks (cluster/preflight.py).

Actors inherit the environment of their node's `ray start`, not the driver's: under `ray job submit` the
submitting shell's variables reach neither. So the driver passes on where the Hugging Face cache is and how
to reach the hub. Without HF_HOME / HF_HUB_CACHE, weights cached under a custom folder are not found (an
offline cluster fails to load them) or are downloaded again on every node; without HF_TOKEN a gated model
(FLUX.1-dev) does not download at all.
"""

from __future__ import annotations

import os

# Passed on from the driver when set there (a node's own `ray start` environment applies otherwise).
FORWARDED = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT")


def forwarded_env() -> dict[str, str]:
    """The driver's values of FORWARDED that are set and non-empty."""
    return {k: os.environ[k] for k in FORWARDED if os.environ.get(k)}


def actor_env(threads: int) -> dict:
    """A Ray `runtime_env`: the hub settings passed on, thread counts set on purpose (Ray's default is
    one thread), OpenMP's idle threads made to sleep, and the libraries' loading bars and notices silenced."""
    return {
        "env_vars": {
            **forwarded_env(),
            "OMP_NUM_THREADS": str(threads),
            # An OpenMP thread that waits at a barrier spins by default. Where the node's cores are shared
            # (a CPU run beside other jobs, several actors per core) a spinning thread burns the time slice
            # its partner needs, and a 2-thread actor's step grew 12-30x at a load of 3-4 on 2 cores
            # (benchmarks/omp_wait.py); passive waiting kept it at 1.0-1.1x. Same threads, same splits:
            # the numbers are unchanged. A value set for the driver wins.
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            # libgomp's spin count before a waiting thread sleeps overrides the policy where set
            # (benchmarks/omp_wait.py compares settings with it).
            **({"GOMP_SPINCOUNT": os.environ["GOMP_SPINCOUNT"]} if os.environ.get("GOMP_SPINCOUNT") else {}),
            "TOKENIZERS_PARALLELISM": "false",
            # Loading bars from every actor would drown the per-iteration progress lines.
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "DIFFUSERS_VERBOSITY": "error",
            "TRANSFORMERS_VERBOSITY": "error",
        }
    }
