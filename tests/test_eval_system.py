"""The evaluation and the training monitor in a real run on local Ray: the trainer's evaluation and
`launch.py eval` of the same checkpoint agree image by image (one path), the base and final
evaluations are compared pairwise, the held-out training-prompt check runs, and the probe set is
sampled every N iterations into metrics, curves.png, TensorBoard and (offline) Weights & Biases."""

from __future__ import annotations

import json

import pytest

import launch
from cluster.config import load_config
from cluster.trainer import Trainer
from tests.tiny_models import FLOWGRPO, SMALL_EVAL

pytestmark = pytest.mark.system


def _overrides(tiny_sd3_path, tmp_path) -> list[str]:
    return [
        f"model.path={tiny_sd3_path}", "model.guidance_scale=2.0", "model.lora.rank=4", "model.lora.alpha=8",
        "sampling.group_size=4", "sampling.num_steps=3", "sampling.eval_num_steps=3",
        "data.images_per_iteration=8", "data.eval_num_prompts=6", *SMALL_EVAL, "data.eval_images_per_tag=4",
        "data.eval_train_images_per_tag=2", "iterations=2", "learner.micro_batch_size=8",
        "learner.learning_rate=1e-2", "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5",
        "logging.probe_every=1", "logging.probe_images_per_tag=2", "logging.checkpoint_every=1",
        "logging.wandb=true", "logging.wandb_mode=offline", f"logging.output_dir={tmp_path}",
    ]


def test_run_evaluates_pairs_and_monitors_and_the_cli_agrees(local_ray, tiny_sd3_path, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = _overrides(tiny_sd3_path, tmp_path)
    with Trainer(load_config(FLOWGRPO, overrides)) as trainer:
        final = trainer.run().summary
    for name in ("eval_base", "eval", "eval_base_train", "eval_train"):
        assert (tmp_path / f"{name}_images.jsonl").is_file(), name
    assert final["split"] == "test" and set(final["ci"]) >= {"overall", "single_object"}
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison["num_images"] == final["num_images"] and "overall" in comparison["differences"]["accuracy"]
    assert json.loads((tmp_path / "comparison_train.json").read_text())["split"] == "train"

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("probe/overall" in r and "time/probe" in r for r in rows)
    assert sorted(p.name for p in (tmp_path / "probes").glob("probe_*.json")) == [
        "probe_000000.json", "probe_000001.json", "probe_000002.json"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "before_after.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "probe/images" in events.Tags()["images"] and "probe/overall" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("probe/overall")] == [0, 1]  # one per metrics row
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))  # the W&B run, offline

    # One evaluation path: the CLI on the final checkpoint reads every image exactly as the trainer did.
    out = tmp_path / "cli"
    assert launch.main(["eval", *overrides, "--checkpoint", str(tmp_path), "--output-dir", str(out),
                        "--against", str(tmp_path)]) == 0
    assert (out / "eval_images.jsonl").read_text() == (tmp_path / "eval_images.jsonl").read_text()
    assert json.loads((out / "comparison.json").read_text())["differences"]["accuracy"]["overall"]["ci"] == [0.0, 0.0]
