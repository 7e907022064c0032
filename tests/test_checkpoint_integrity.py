"""Checkpoints under faults: a full disk mid-write keeps the previous checkpoint and stops the run with the
path and the cause; a truncated, altered or incomplete checkpoint is refused at --resume, naming the file,
before anything is loaded or written. The checkpoints are a real learner rank's (tiny random SD3, one gloo
rank, in-process), written by the same `write_checkpoint` the Trainer calls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import checkpoints
from cluster.trainer import Trainer
from common.durable import CheckpointError
from learner.engine import free_port
from learner.worker import LearnerWorker
from tests.test_system import _config

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[1]
OPTIMIZER = "optimizer_rank0.safetensors"


def _cfg(model: str, out: Path, **over):
    return _config(model, out, **{"cluster.num_learner_ranks": 1, "learner.zero_stage": 0, **over})


def _learner(cfg) -> LearnerWorker:
    worker = LearnerWorker(cfg.model, cfg.sampling, cfg.learner, algorithm=cfg.algorithm, seed=cfg.seed,
                           iterations=cfg.iterations)
    worker.setup("127.0.0.1", free_port())
    return worker


def _write(cfg, learner: LearnerWorker, iteration: int) -> Path:
    """Checkpoint `iteration` as Trainer.checkpoint does: the rank's files, the driver's state, the manifest."""
    trainer = Trainer(cfg)
    trainer.iteration = trainer.version = iteration
    return checkpoints.write_checkpoint(cfg.logging.output_dir, iteration, lambda staging: [learner.save_checkpoint(str(staging))],
                                        trainer.state(), cfg.logging.keep_checkpoints)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# A child process: one real checkpoint, then a file-size limit at half its weights file (SIGXFSZ ignored, so
# the write fails with EFBIG, as on a full disk, half-way through), then the next checkpoint. It prints
# what was raised.
FILL_DISK = """
import json, resource, signal, sys
from pathlib import Path
from tests.test_checkpoint_integrity import _cfg, _learner, _write
cfg = _cfg(sys.argv[1], Path(sys.argv[2]))
learner = _learner(cfg)
first = _write(cfg, learner, 1)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = (first / "trainable.safetensors").stat().st_size // 2
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    _write(cfg, learner, 2)
    print(json.dumps({"raised": None}))
except Exception as err:
    print(json.dumps({"raised": type(err).__name__, "message": str(err)}))
"""


def test_a_full_disk_mid_checkpoint_keeps_the_previous_one_and_names_path_and_cause(tiny_sd3_path, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, "-c", FILL_DISK, tiny_sd3_path, str(out)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["raised"] == "CheckpointError", outcome
    message = outcome["message"]
    root = out / "checkpoints"
    assert f"checkpoint {root / 'iter_000002'} was not written" in message
    assert "learner-0: writing" in message and "trainable.safetensors" in message  # the rank and the file
    assert "File too large" in message  # the cause
    assert f"the previous checkpoint {root / 'iter_000001'} is intact" in message
    assert sorted(p.name for p in root.iterdir()) == ["iter_000001"]  # the partial write was removed
    checkpoints.verify_checkpoint(root / "iter_000001")  # byte for byte what its manifest recorded


@pytest.fixture(scope="module")
def written(tiny_sd3_path, tmp_path_factory):
    """A run folder holding one real checkpoint (iteration 2), a metrics log and a config."""
    out = tmp_path_factory.mktemp("written") / "run"
    cfg = _cfg(tiny_sd3_path, out)
    ckpt = _write(cfg, _learner(cfg), 2)
    (out / "metrics.jsonl").write_text("".join(json.dumps({"iteration": i}) + "\n" for i in range(2)))
    (out / "config.yaml").write_text("seed: 0\n")
    return out, ckpt


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": (lambda ckpt: os.truncate(ckpt / OPTIMIZER, (ckpt / OPTIMIZER).stat().st_size // 2),
                  OPTIMIZER, "bytes where manifest.json records"),
    "flipped byte": (lambda ckpt: _flip_a_byte(ckpt / "trainable.safetensors"),
                     "trainable.safetensors", "does not match its sha256"),
    "deleted": (lambda ckpt: (ckpt / "optimizer_rank0.json").unlink(), "optimizer_rank0.json", "is missing"),
    "added": (lambda ckpt: (ckpt / "ema.safetensors").write_bytes(b"{}"), "ema.safetensors", "is not listed"),
    "manifest deleted": (lambda ckpt: (ckpt / checkpoints.MANIFEST).unlink(), checkpoints.MANIFEST, "is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_refuses_a_damaged_checkpoint_naming_the_file_and_loses_nothing(written, tiny_sd3_path, tmp_path,
                                                                               damage):
    pristine, _ = written
    out = tmp_path / "run"
    shutil.copytree(pristine, out)
    ckpt = out / "checkpoints" / "iter_000002"
    checkpoints.verify_checkpoint(ckpt)  # the copy is sound
    apply, name, why = DAMAGE[damage]
    apply(ckpt)
    before = _snapshot(out)
    trainer = Trainer(_cfg(tiny_sd3_path, out), resume=True)
    with pytest.raises(CheckpointError, match=why) as refused:
        trainer.setup()  # refused before Ray, any actor or any write into the run folder
    assert str(ckpt / name) in str(refused.value)
    assert _snapshot(out) == before


def test_a_checkpoint_from_before_manifests_resumes_with_a_warning(written, tiny_sd3_path, tmp_path):
    pristine, _ = written
    out = tmp_path / "run"
    shutil.copytree(pristine, out)
    ckpt = out / "checkpoints" / "iter_000002"
    (ckpt / checkpoints.MANIFEST).unlink()
    state = json.loads((ckpt / checkpoints.STATE_FILE).read_text())
    del state["checkpoint_format"]  # as the earlier code wrote it
    (ckpt / checkpoints.STATE_FILE).write_text(json.dumps(state))
    trainer = Trainer(_cfg(tiny_sd3_path, out), resume=True)
    with pytest.warns(UserWarning, match="has no manifest.json .* loaded unverified"):
        found, read = trainer.open_checkpoint()
    assert found == ckpt and read["iteration"] == 2

