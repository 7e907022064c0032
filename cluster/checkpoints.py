"""Run checkpoints on disk: one folder per iteration, written under a temporary name and renamed when
complete, so a crash mid-write never leaves a folder that looks complete.

    <output_dir>/checkpoints/iter_000004/
        trainable.safetensors            learner rank 0's trainable weights (LoRA adapters or transformer)
        optimizer_rank<r>.{safetensors,json}   each learner rank's optimizer state (no pickle)
        trainer_state.json               iteration, policy version, seed, config (written last)

Randomness needs no saved state: every draw is seeded from (seed, iteration, ...) (models/seeding.py),
and the prompts of iteration i are a pure function of (seed, i), so the data position is the iteration.
On a multi-node cluster `logging.output_dir` must be storage that every learner node can write; the
driver resolves it once and checks that every learner rank sees it (common/storage.py).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

STATE_FILE = "trainer_state.json"
PREVIOUS_RUNS = "previous_runs"


def archive_previous_run(output_dir: str | Path) -> Path | None:
    """A fresh (not resumed) run into a folder that already holds a run moves that run's files into
    `<output_dir>/previous_runs/<UTC time>/` first, so its metrics.jsonl is not appended to the old
    one and `--resume` never picks the old run's checkpoints. Returns the archive, or None."""
    out = Path(output_dir)
    if not ((out / "metrics.jsonl").exists() or checkpoints_root(out).exists()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = out / PREVIOUS_RUNS / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = out / PREVIOUS_RUNS / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for entry in sorted(out.iterdir()):
        if entry.name != PREVIOUS_RUNS:
            shutil.move(str(entry), str(dest / entry.name))
    return dest


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def staging_dir(output_dir: str | Path, iteration: int) -> Path:
    """Where the learner ranks write a checkpoint before it is published."""
    path = checkpoints_root(output_dir) / f"iter_{iteration:06d}.partial"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def publish(staging: Path, state: dict, keep: int) -> Path:
    """Write the trainer state last, rename the folder into place, and keep only the newest `keep`."""
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
    final = staging.with_name(staging.name.removesuffix(".partial"))
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    for old in complete_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("iter_*") if p.is_dir() and not p.name.endswith(".partial") and (p / STATE_FILE).is_file())


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; partial ones are skipped with a warning."""
    root = checkpoints_root(output_dir)
    partial = sorted(root.glob("iter_*.partial")) if root.is_dir() else []
    for p in partial:
        warnings.warn(f"skipping incomplete checkpoint {p} (the run stopped while writing it)", stacklevel=2)
    done = complete_checkpoints(root)
    return done[-1] if done else None


def evaluation_weights_file(checkpoint: str | Path, ema: bool) -> Path:
    """The file whose weights an evaluation of `checkpoint` (a checkpoint folder, or a run directory: its
    newest) uses: the EMA's when learner.ema_decay is set (`ema`), as the Trainer evaluates, else the
    trained weights (also for DiffusionNFT, whose EMA is the sampling policy, not the evaluated one)."""
    ckpt = Path(checkpoint)
    if not (ckpt / STATE_FILE).is_file():
        ckpt = latest_checkpoint(ckpt) or ckpt
    file = ckpt / ("ema.safetensors" if ema else "trainable.safetensors")
    if not file.is_file():
        raise ValueError(f"{checkpoint} holds no checkpoint (expected {file})")
    return file


def read_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint state {path} is missing or unreadable: {err}") from None
    for key in ("iteration", "policy_version", "seed"):
        if key not in state:
            raise ValueError(f"checkpoint state {path} lacks {key!r}")
    return state
