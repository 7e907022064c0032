"""Run checkpoints on disk: one folder per iteration, written into a sibling `iter_N.partial`, fsynced and
renamed into place only when complete, so a crash or a full disk mid-write never leaves a folder that
looks complete, and the previous checkpoint is pruned only after the new one is in place.

    <output_dir>/checkpoints/iter_000004/
        trainable.safetensors            learner rank 0's trainable weights (LoRA adapters or transformer)
        optimizer_rank<r>.{safetensors,json}   each learner rank's optimizer state (no pickle)
        trainer_state.json               iteration, policy version, seed, config, checkpoint_format
        manifest.json                    every other file's size and sha256 (written last)

`--resume` checks the newest checkpoint against its manifest before anything is loaded and refuses a
truncated, altered, missing or unlisted file by name. The digests detect damage (a copy cut short, a
flipped bit, a hand edit); they are not a signature: whoever can write the run directory can write a
matching manifest too. A checkpoint from before manifests (no `checkpoint_format` in its state) is
resumed with a warning instead of refused: refusing would strand every run started before the upgrade
with no key to get past it, and its loaders still refuse files they cannot parse (safetensors checks
its header against the file's length).

Randomness needs no saved state: every draw is seeded from (seed, iteration, ...) (models/seeding.py),
and the prompts of iteration i are a pure function of (seed, i), so the data position is the iteration.
On a multi-node cluster `logging.output_dir` must be storage that every learner node can write; the
driver resolves it once and checks that every learner rank sees it (common/storage.py).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from common.durable import CheckpointError, describe, file_digest, fsync_dir, write_json

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
FORMAT = 2  # trainer_state.json's checkpoint_format: 2 = manifest.json written last
PREVIOUS_RUNS = "previous_runs"
_PUBLISHED = re.compile(r"iter_\d+")  # not .partial (being written) nor .replaced (being swapped out)


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


def _staging_path(output_dir: str | Path, iteration: int) -> Path:
    return checkpoints_root(output_dir) / f"iter_{iteration:06d}.partial"


def staging_dir(output_dir: str | Path, iteration: int) -> Path:
    """Where the learner ranks write a checkpoint before it is published (emptied first)."""
    path = _staging_path(output_dir, iteration)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_checkpoint(output_dir: str | Path, iteration: int, save: Callable[[Path], list[dict]], state: dict,
                     keep: int) -> Path:
    """Checkpoint `iteration`: `save(staging)` writes the learner ranks' files into the staging folder and
    returns each rank's {file: digest}; then `publish`. A write that fails (a full disk) removes the
    staging folder, which may hold what filled the disk, leaves every earlier checkpoint as it was, and
    raises CheckpointError naming the path and the cause. Other errors (a dead rank) propagate as they are."""
    staging = _staging_path(output_dir, iteration)
    try:
        staging_dir(output_dir, iteration)
        digests = {name: d for part in save(staging) for name, d in (part or {}).items()}
        return publish(staging, state, keep, digests)
    except Exception as err:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(err, (CheckpointError, OSError)):
            raise
        previous = latest_checkpoint(output_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"checkpoint {staging.with_suffix('')} was not written: {describe(err)}; {kept}. "
                              "Fix the cause (a full disk: free space there) and restart with --resume") from err


def publish(staging: Path, state: dict, keep: int, digests: dict[str, dict] | None = None) -> Path:
    """Write the trainer state, then the manifest of every file (`digests` as the writers computed them,
    the rest hashed here), fsync, rename the folder into place, and keep only the newest `keep`."""
    digests = dict(digests or {})
    digests[STATE_FILE] = write_json(staging / STATE_FILE, {**state, "checkpoint_format": FORMAT})
    files = {p.name: digests.get(p.name) or file_digest(p) for p in sorted(staging.iterdir())}
    write_json(staging / MANIFEST, {"format": FORMAT, "files": files})
    fsync_dir(staging)
    final = staging.with_name(staging.name.removesuffix(".partial"))
    _swap_into_place(staging, final)
    for old in complete_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old)
    return final


def _swap_into_place(staging: Path, final: Path) -> None:
    """Rename `staging` to `final`. A folder already there (the same iteration written again) is renamed
    aside first and removed only once the new one is in place: a directory cannot be renamed over a
    non-empty one, and removing it first would leave a moment with neither."""
    replaced = final.with_name(final.name + ".replaced")
    if replaced.exists():
        shutil.rmtree(replaced)
    if final.exists():
        final.rename(replaced)
    try:
        staging.rename(final)
    except OSError:
        if replaced.exists():
            replaced.rename(final)  # the earlier one back under its name
        raise
    fsync_dir(final.parent)
    shutil.rmtree(replaced, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Published checkpoint folders, oldest first: a folder is renamed to its final name only when
    complete, so one that lost a file since is damaged, not in progress (`verify_checkpoint` names it)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("iter_*") if p.is_dir() and _PUBLISHED.fullmatch(p.name))


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
    verify_checkpoint(ckpt, names=[file.name])
    return file


def verify_checkpoint(ckpt: Path, names: list[str] | None = None) -> None:
    """Check a checkpoint's files against its manifest before anything loads them: every listed file
    present with its size and sha256, and no file the manifest does not list (`names`: only those
    files). Raises CheckpointError naming the file; warns for a checkpoint from before manifests."""
    ckpt = Path(ckpt)
    listed = _manifest(ckpt)
    if listed is None:
        return
    if names is None:
        for path in sorted(ckpt.iterdir()):
            if path.name != MANIFEST and path.name not in listed:
                raise CheckpointError(f"{path} is not listed in {ckpt / MANIFEST}: refusing a checkpoint "
                                      "with files it was not written with")
    for name in sorted(listed if names is None else names):
        path, want = ckpt / name, listed.get(name)
        if want is None:
            raise CheckpointError(f"{path} is not listed in {ckpt / MANIFEST}")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {ckpt / MANIFEST})")
        if (size := path.stat().st_size) != want["size"]:
            raise CheckpointError(f"{path} has {size} bytes where {MANIFEST} records {want['size']}: truncated "
                                  "or overwritten")
        if file_digest(path)["sha256"] != want["sha256"]:
            raise CheckpointError(f"{path} does not match its sha256 in {MANIFEST}: the file was altered or "
                                  "corrupted")


def _manifest(ckpt: Path) -> dict | None:
    """{file: {"size", "sha256"}} from the manifest; None, with a warning, for a checkpoint from before
    manifests (see the module's docstring for why it is accepted)."""
    path = ckpt / MANIFEST
    if not path.is_file():
        if _declared_format(ckpt) >= FORMAT:
            raise CheckpointError(f"{path} is missing: {ckpt / STATE_FILE} says it was written with one")
        warnings.warn(f"checkpoint {ckpt} has no {MANIFEST} (written before flowray recorded digests): its "
                      "files are loaded unverified", stacklevel=3)
        return None
    try:
        files = json.loads(path.read_text())["files"]
        return {name: {"size": int(d["size"]), "sha256": str(d["sha256"])} for name, d in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} is unreadable: {err}") from None


def _declared_format(ckpt: Path) -> int:
    try:
        return int(json.loads((ckpt / STATE_FILE).read_text()).get("checkpoint_format", 1))
    except (OSError, ValueError, AttributeError):
        return 1  # unreadable or absent: read_state names it


def schedule_change(state: dict, cfg) -> str | None:
    """learner/engine.py `lr_horizon_change` between the run a checkpoint's state recorded and `cfg`
    (an ExperimentConfig) resuming it; None for a state without its config."""
    from learner.engine import lr_horizon_change

    saved = state.get("config")
    if not isinstance(saved, dict) or "iterations" not in saved:
        return None
    keys = ("learning_rate", "lr_schedule", "lr_schedule_iterations", "lr_final_fraction")
    learner = saved.get("learner", {})
    # Only the schedule's keys are read back: the rest of an older config may not validate any more.
    before = cfg.learner.model_copy(update={k: learner[k] for k in keys if k in learner})
    return lr_horizon_change(before, int(saved["iterations"]), cfg.learner, cfg.iterations, int(state["iteration"]))


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
