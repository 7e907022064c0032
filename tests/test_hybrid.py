"""cluster.layout 'hybrid' (cluster/hybrid.py): learner ranks that sample with their live weights, on a real
local Ray (CPU) with DeepSpeed over gloo. A hybrid run trains bit for bit what the split layout trains
(same seeds, same groups, the same weights after every update), evaluates with the EMA weights and gets
its training weights back, and resumes bit-exactly, for Flow-GRPO and DiffusionNFT on one rank and on
two ZeRO-2 ranks."""

from __future__ import annotations

import json
import shutil

import pytest
import ray
import torch
from safetensors.torch import load_file

from cluster.config import REPO_ROOT, load_config
from cluster.trainer import LearnerRankError, Trainer
from tests.tiny_models import SMALL_EVAL


def _config(preset, tiny_sd3_path, out, ranks=1, **over):
    overrides = [
        f"model.path={tiny_sd3_path}", "model.guidance_scale=1.0", "model.lora.rank=4", "model.lora.alpha=8",
        "sampling.group_size=4", "sampling.num_steps=3", "sampling.eval_num_steps=3",
        "data.images_per_iteration=8", "data.eval_num_prompts=2", "data.eval_images_per_prompt=1", "iterations=2",
        "rewards.scorers=[{name: shapes_quality}]", "learner.learning_rate=1e-2", "learner.micro_batch_size=8",
        f"cluster.num_learner_ranks={ranks}", f"cluster.num_rollout_actors={ranks}", "cluster.learner_num_cpus=0.5",
        "cluster.rollout_num_cpus=0.5", "cluster.layout=hybrid", "logging.tensorboard=false",
        "logging.eval_base=false", "logging.checkpoint_every=1", f"logging.output_dir={out}", *SMALL_EVAL,
    ]
    if ranks > 1:
        overrides.append("learner.zero_stage=2")
    if preset == "shapes_nft":
        overrides += ["algorithm.train_timesteps=2", "algorithm.old_policy_decay_rate=0.25"]
    return load_config(REPO_ROOT / "configs" / f"{preset}.yaml", overrides + [f"{k}={v}" for k, v in over.items()])


def _trained(out) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith(("policy/", "reward/", "advantage/", "learner/first"))}
            for r in rows]


def _same_files(a_dir, b_dir, names) -> None:
    for name in names:
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        assert a.keys() == b.keys(), name
        assert all((a[k] == b[k]).all() for k in a), f"{name} differs between {a_dir} and {b_dir}"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"cluster.num_rollout_actors": 2}, "cluster.num_rollout_actors (2) must equal cluster.num_learner_ranks (1)"),
        ({"cluster.rollout_num_gpus": 1}, "cluster.rollout_num_gpus=0"),
        ({"cluster.async_mode": "true"}, "cluster.async_mode"),
        ({"cluster.colocate": "true"}, "cluster.colocate"),
        ({"learner.zero_stage": 3}, "learner.zero_stage <= 2"),
    ],
)
def test_hybrid_refuses_what_it_cannot_combine_with_naming_the_keys(tmp_path, override, named):
    with pytest.raises(ValueError, match="cluster.layout=hybrid") as err:
        _config("shapes_flowgrpo", "unused", tmp_path, **override)
    assert named in str(err.value)


@pytest.mark.system
def test_hybrid_trains_and_evaluates_exactly_what_split_does_and_a_lost_worker_stops_the_run(
    local_ray, tiny_sd3_path, tmp_path
):
    runs = {}
    for layout in ("split", "hybrid"):
        cfg = _config("shapes_flowgrpo", tiny_sd3_path, tmp_path / layout, ranks=2,
                      **{"cluster.layout": layout, "learner.ema_decay": 0.5})  # evaluation swaps the EMA in
        with Trainer(cfg) as trainer:
            trainer.run()
            if layout == "hybrid":
                assert trainer.rollouts is trainer.learners
                digests = {ray.get(w.sampling_digest.remote(trainer.version))["digest"] for w in trainer.learners}
                assert len(digests) == 1  # both ranks sample with the same bits after the evaluation
                held = ray.get(trainer.rollouts[0].weights.remote())  # what it samples with: the trained weights
                trained = ray.get(trainer.learners[0].export_weights.remote())
                assert all(torch.equal(held[k].float(), torch.from_numpy(v)) for k, v in trained.items())
                ray.kill(trainer.learners[1], no_restart=True)
                with pytest.raises(LearnerRankError, match="hybrid-1 died while sampling"):
                    trainer.rollout(trainer.submit_rollout(2))
        runs[layout] = _trained(tmp_path / layout)
    assert runs["split"] == runs["hybrid"] and runs["hybrid"][0]["learner/first_minibatch_ratio_mean"] == 1.0
    assert (tmp_path / "split" / "eval.json").read_bytes() == (tmp_path / "hybrid" / "eval.json").read_bytes()
    _same_files(tmp_path / "split" / "checkpoints" / "iter_000002", tmp_path / "hybrid" / "checkpoints" / "iter_000002",
                ["trainable.safetensors", "ema.safetensors"])


@pytest.mark.system
@pytest.mark.parametrize(("preset", "ranks"), [
    ("shapes_flowgrpo", 1),
    # two Flow-GRPO ranks train as the split layout does (above), which test_multirank resumes: -m slow
    pytest.param("shapes_flowgrpo", 2, marks=pytest.mark.slow),
    ("shapes_nft", 1),
    ("shapes_nft", 2),
    ("shapes_grpo_guard", 1),  # the sampler's recorded step means travel with the groups (records_step_means)
    pytest.param("shapes_flow_dppo", 1, marks=pytest.mark.slow),  # the same plumbing as GRPO-Guard
    ("shapes_dgpo", 1),  # the group pass before the update, the group-shared draws
    pytest.param("shapes_elbo", 1, marks=pytest.mark.slow),  # shared stratified draws, the EMA as shapes_nft
])
def test_hybrid_resumes_bit_exactly(local_ray, tiny_sd3_path, tmp_path, preset, ranks):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with Trainer(_config(preset, tiny_sd3_path, straight, ranks)) as trainer:
        trainer.train()
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "iter_000002")  # as if the run had stopped after iteration 1
    with Trainer(_config(preset, tiny_sd3_path, resumed, ranks), resume=True) as trainer:
        assert trainer.iteration == 1
        trainer.train()
    names = ["trainable.safetensors", *(f"optimizer_rank{r}.safetensors" for r in range(ranks))]
    if preset in ("shapes_nft", "shapes_elbo"):
        names.append("old_policy.safetensors")  # the EMA sampling policy, held on the device
    _same_files(straight / "checkpoints" / "iter_000002", resumed / "checkpoints" / "iter_000002", names)
    assert _trained(resumed) == _trained(straight)
    if preset == "shapes_nft" and ranks == 2:  # and the split layout trains the same weights
        split = tmp_path / "split"
        with Trainer(_config(preset, tiny_sd3_path, split, ranks, **{"cluster.layout": "split"})) as trainer:
            trainer.train()
        _same_files(straight / "checkpoints" / "iter_000002", split / "checkpoints" / "iter_000002", names)
