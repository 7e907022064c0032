"""The memory planner's estimate against measured peak RSS, on CPU, at the published widths.

    python benchmarks/memory_plan.py [--models DIR] [--case NAME ...]

Builds the real-width, reduced-depth SD3.5-Medium and FLUX.1-dev folders (scripts/build_real_width.py) once
into --models, then runs each case in a fresh subprocess: a rollout-actor-like process (RolloutWorker
samples and decodes one group) or a learner-like process (LearnerWorker, which loads the transformer only,
trains on one group that a RolloutWorker in another process sampled, with the prompt embeddings it ships). Each reports, minus the RSS it had after its imports (torch, diffusers, peft,
DeepSpeed: an empty process's baseline): `loaded`, its RSS once built; `resident`, its RSS just before the
measured work (the learner's includes what the allocator kept of its sampling); `peak`, its peak during the
work, with the load's own transient (safetensors reads, dtype casts; `load_peak`) excluded by resetting the
peak first (/proc/self/clear_refs 5): what a GPU would have to hold. Beside each measurement, the planner's estimate
(cluster/memory_plan.py) of the same config with the same number of prompts, and the ratio. The configs
are the SD3.5 and FLUX presets with resolution, group size, steps, T5 length and micro-batch cut to fit
2 cores; widths, heads and dtypes are the published ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# case -> (family, transformer layers, preset, overrides, process kind). SD3.5: LoRA + CFG, Flow-GRPO, 4 layers
# so that the learner's activations are a large part; FLUX: full fine-tuning (1 double + 1 single block: ~13 GB
# of fp32 optimizer state already), G2RPO's batched rows, gradient checkpointing as the FLUX presets.
# CPU actors: the plan counts host memory. The split layout (the presets are hybrid): each case measures one
# actor kind in its own process, a rollout actor or a learner rank.
COMMON = ["model.resolution=256", "model.max_sequence_length=16", "cluster.layout=split", "cluster.num_learner_ranks=1",
          "cluster.num_rollout_actors=1", "cluster.rollout_num_gpus=0", "cluster.learner_num_gpus=0"]
SD35 = ["sampling.group_size=4", "sampling.num_steps=2", "data.images_per_iteration=4", "learner.micro_batch_size=4"]
FLUX = ["sampling.group_size=2", "sampling.num_steps=3", "algorithm.steps=[0,1]", "data.images_per_iteration=2",
        "learner.micro_batch_size=2", "cluster.rollout_images_per_decode=4"]  # fmt: skip
FLUX2 = ["sampling.group_size=4", "sampling.num_steps=3", "algorithm.window_range=[1,3]", "data.images_per_iteration=4",
         "learner.micro_batch_size=2"]  # fmt: skip
KLEIN = ["sampling.group_size=4", "sampling.num_steps=3", "data.images_per_iteration=4", "learner.micro_batch_size=4"]
QWEN_Z = ["sampling.group_size=4", "sampling.num_steps=3", "algorithm.window_range=[1,3]", "data.images_per_iteration=4",
          "learner.micro_batch_size=2"]  # fmt: skip
QWEN_Z_512 = QWEN_Z + ["model.resolution=512"]  # the learners at 4x the tokens their activation factors were fitted at
# Wan: the preset's LoRA, CFG and DanceGRPO (timestep_fraction 0.6: 1 of 3 steps trained per video), 9 frames (3
# latent frames: the VAE decodes them one by one with its causal caches), 2 videos per decode as the preset; the
# learner takes the group's 4 videos in one micro-batch (8 rows with CFG), so that its activations are a large part.
WAN = ["model.num_frames=9", "sampling.group_size=4", "sampling.num_steps=3", "data.images_per_iteration=4",
       "learner.micro_batch_size=4", "learner.optimizer_steps_per_iteration=1"]  # fmt: skip
WAN_384 = WAN + ["model.resolution=384", "model.num_frames=5"]  # 2.25x the pixels per frame, 2 latent frames
# Held out (not used to fit the Wan factors, which the four cases above fitted): 17 frames at 256 px (5 latent frames,
# 1280 video tokens), a frame count none of the fits saw, so the decode's "peak does not grow with the frames" and the
# training factor's tokens-per-row scaling are checked rather than fitted; the learner at micro-batches of 2 videos
# (4 rows of 1296 tokens, longer rows than any fitted case) to stay within a few GB and minutes on 2 cores.
WAN_17F = WAN + ["model.num_frames=17"]
CASES = {
    "sd35_rollout": ("sd35", 4, "sd35_geneval", SD35, "rollout"),
    "sd35_learner": ("sd35", 4, "sd35_geneval", SD35 + ["model.gradient_checkpointing=false"], "learner"),
    "sd35_learner_ckpt": ("sd35", 4, "sd35_geneval", SD35 + ["model.gradient_checkpointing=true"], "learner"),
    "flux_rollout": ("flux", 1, "flux_g2rpo_hps", FLUX, "rollout"),
    "flux_learner_ckpt": ("flux", 1, "flux_g2rpo_hps", FLUX, "learner"),
    # SD3.5-Large (2 of its 2432-wide blocks) as sd35l_grpo_geneval trains it: LoRA, CFG, gradient checkpointing.
    "sd35l_rollout": ("sd35l", 2, "sd35l_grpo_geneval", SD35, "rollout"),
    "sd35l_learner_ckpt": ("sd35l", 2, "sd35l_grpo_geneval", SD35, "learner"),
    # FLUX.2-dev (1 double + 1 single block at 6144: 2.3 B parameters) and klein-4B (1 + 1 at 3072) as their presets
    # train them: dev's LoRA Flow-GRPO-Fast window with gradient checkpointing, klein's CFG-free DiffusionNFT.
    "flux2_rollout": ("flux2", 1, "flux2_dev_grpo_pickscore", FLUX2, "rollout"),
    "flux2_learner_ckpt": ("flux2", 1, "flux2_dev_grpo_pickscore", FLUX2, "learner"),
    "flux2_klein_rollout": ("flux2_klein", 1, "flux2_klein_nft_pickscore", KLEIN, "rollout"),
    "flux2_klein_learner": ("flux2_klein", 1, "flux2_klein_nft_pickscore", KLEIN, "learner"),
    # Qwen-Image (1 block at 3072, one layer each of Qwen2.5-VL's language model and vision tower) and Z-Image (1
    # main + 1 + 1 refiner blocks at 3840, 2 Qwen3 layers) as their Flow-GRPO presets train them: LoRA, a 2-step SDE
    # window, gradient checkpointing; Qwen-Image with true CFG, Z-Image CFG-free with fp32 adapters.
    "qwen_image_rollout": ("qwen_image", 1, "qwen_image_grpo_ocr", QWEN_Z, "rollout"),
    "qwen_image_learner_ckpt": ("qwen_image", 1, "qwen_image_grpo_ocr", QWEN_Z_512, "learner"),
    "z_image_rollout": ("z_image", 1, "z_image_grpo_pickscore", QWEN_Z, "rollout"),
    "z_image_learner_ckpt": ("z_image", 1, "z_image_grpo_pickscore", QWEN_Z_512, "learner"),
    # Wan2.1-T2V-1.3B (2 of its 1536-wide blocks, one UMT5-XXL layer, the published video VAE) as wan_dancegrpo_video
    # trains it: LoRA, CFG, DanceGRPO, gradient checkpointing.
    "wan_rollout": ("wan", 2, "wan_dancegrpo_video", WAN, "rollout"),
    "wan_learner_ckpt": ("wan", 2, "wan_dancegrpo_video", WAN, "learner"),
    "wan_rollout_384": ("wan", 2, "wan_dancegrpo_video", WAN_384, "rollout"),
    "wan_learner_ckpt_384": ("wan", 2, "wan_dancegrpo_video", WAN_384 + ["learner.micro_batch_size=2"], "learner"),
    # Held-out checks of those factors (WAN_17F above): the same preset at 17 frames.
    "wan_rollout_17f": ("wan", 2, "wan_dancegrpo_video", WAN_17F, "rollout"),
    "wan_learner_ckpt_17f": ("wan", 2, "wan_dancegrpo_video", WAN_17F + ["learner.micro_batch_size=2"], "learner"),
}
PROMPT = "a photo of a red circle"


def _proc_kib(field: str, path: str = "/proc/self/status") -> int:
    """A 'Field: N kB' line of a /proc file."""
    for line in open(path):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _config(case: str, folder: Path):
    from cluster.config import load_config

    _, _, preset, overrides, _ = CASES[case]
    return load_config(REPO / "configs" / f"{preset}.yaml", [*COMMON, *overrides, f"model.path={folder}"])


def _rollout_worker(cfg):
    from rollout.worker import RolloutWorker

    return RolloutWorker(cfg.model, cfg.sampling, algorithm=cfg.algorithm, device="cpu", torch_threads=1, precision=cfg.learner.precision,
                         rows_per_forward=cfg.cluster.rollout_rows_per_forward,
                         images_per_decode=cfg.cluster.rollout_images_per_decode)


def _request():
    from rollout.worker import GroupRequest

    return GroupRequest(0, PROMPT, {}, seed=1, iteration=0)


def sample_to(case: str, folder: Path, out: Path) -> None:
    """Sample the learner case's group in this (separate) process and save its record, the prompt
    embeddings included, as plain tensors and numbers (`torch.load(weights_only=True)` reads them)."""
    import dataclasses

    import torch

    cfg = _config(case, folder)
    torch.save(dataclasses.asdict(_rollout_worker(cfg).rollout([_request()])[0].rollout), out)


def _load_rollout(path: Path):
    import torch

    from models.types import PromptEmbeds, Rollout, Transitions

    record = torch.load(path, weights_only=True)
    c = record.pop("conditioning")
    n = c["negative"]
    negative = PromptEmbeds(n["embeds"], n["pooled"], mask=n.get("mask")) if n else None  # masks: variable-length prompts
    return Rollout(**{**record, "transitions": Transitions(**record["transitions"]),
                      "conditioning": PromptEmbeds(c["embeds"], c["pooled"], negative, c.get("mask"))})


def child(case: str, folder: Path, sampled: Path | None) -> dict:
    """Run one case in this process; RSS numbers in bytes, relative to the RSS after the imports."""
    import torch

    from learner.engine import free_port
    from learner.worker import LearnerWorker, TrainGroup

    torch.set_num_threads(1)
    cfg, kind = _config(case, folder), CASES[case][4]
    gc.collect()
    base = _proc_kib("VmRSS")
    if kind == "rollout":
        worker = _rollout_worker(cfg)
        work = lambda: worker.rollout([_request()])  # noqa: E731
        loaded = _proc_kib("VmRSS")
    else:
        learner = LearnerWorker(cfg.model, cfg.sampling, cfg.learner, algorithm=cfg.algorithm, seed=0, torch_threads=1, iterations=cfg.iterations)
        learner.setup("127.0.0.1", free_port())
        gc.collect()
        loaded = _proc_kib("VmRSS")
        rollout = _load_rollout(sampled)
        advantages = torch.linspace(-1, 1, rollout.num_samples)
        group = TrainGroup(PROMPT, rollout, advantages, torch.ones(rollout.num_samples, dtype=torch.bool), 0)
        work = lambda: learner.train([group], iteration=0)  # noqa: E731
    gc.collect()
    load_peak, resident = _proc_kib("VmHWM"), _proc_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS: the load's transient is out
        f.write("5")
    work()
    peak = _proc_kib("VmHWM")
    named = (("load_peak", load_peak), ("loaded", loaded), ("resident", resident), ("peak", peak))
    return {k: (v - base) * 1024 for k, v in named}


def estimate(case: str, folder: Path) -> dict:
    """The planner's resident and peak bytes for the process the case runs (one prompt + the negative)."""
    from cluster import memory_plan, model_specs

    cfg, kind = _config(case, folder), CASES[case][4]
    spec = model_specs.pipeline_spec(folder, cfg.model.family)
    plans = memory_plan.plan_memory(cfg, spec, [model_specs.RewardSpec(0)] * len(cfg.rewards.scorers),
                                    train_prompts=1, test_prompts=0)
    plan = next(p for p in plans if p.kind == {"rollout": "rollout actor", "learner": "learner rank"}[kind])
    moving = ("adam moments", "gradients")  # created by the work, not by loading (as the transients)
    resident = sum(t.bytes for t in plan.terms if not t.label.startswith(moving))
    return {"resident": resident, "peak": plan.total, "lines": plan.lines()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=REPO / "outputs" / "real_width_models")
    p.add_argument("--case", action="append", choices=sorted(CASES), help="default: every case")
    p.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--sampled", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--sample-to", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child and args.sample_to:
        sample_to(args.child, args.folder, args.sample_to)
        return
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.sampled)))
        return
    sys.path.insert(0, str(REPO / "scripts"))
    from build_real_width import FAMILIES, build

    rows = []
    for case in args.case or list(CASES):
        family, layers = CASES[case][:2]
        folder = args.models / f"layers{layers}" / FAMILIES[family][0]
        if not (folder / "model_index.json").is_file():
            build(folder.parent, family, layers)
        est = estimate(case, folder)
        available = _proc_kib("MemAvailable", "/proc/meminfo") * 1024
        if available < est["peak"] + 1e9:  # a shared machine: do not push it into the OOM killer
            print(f"| {case} | skipped: needs ~{est['peak'] / 1e9:.1f} GB, {available / 1e9:.1f} GB available |", flush=True)
            continue
        command = [sys.executable, __file__, "--child", case, "--folder", str(folder)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with tempfile.TemporaryDirectory() as tmp:
            sampled = Path(tmp) / "group.pt"
            if CASES[case][4] == "learner":  # its group comes from a rollout actor's process, as in a run
                out = subprocess.run([*command, "--sample-to", str(sampled)], capture_output=True, text=True, env=env)
                if out.returncode:
                    sys.exit(f"{case} (sampling its group) failed:\n{out.stderr[-4000:]}")
                command += ["--sampled", str(sampled)]
            out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"{case} failed:\n{out.stderr[-4000:]}")
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{case} measured (bytes above the imports' RSS): {measured}", flush=True)
        print("\n".join(est["lines"]), flush=True)
        rows.append((case, measured, est))
        print(_row(case, measured, est), flush=True)
    print("\n| case | resident: estimate / measured (ratio) | peak: estimate / measured (ratio) | loaded, load peak |")
    print("|---|---|---|---|")
    for case, measured, est in rows:
        print(_row(case, measured, est))


def _row(case: str, measured: dict, est: dict) -> str:
    gb = 1e9
    cells = [f"{est[k] / gb:.2f} / {measured[k] / gb:.2f} GB ({est[k] / measured[k]:.2f})" for k in ("resident", "peak")]
    return f"| {case} | {cells[0]} | {cells[1]} | {measured['loaded'] / gb:.2f}, {measured['load_peak'] / gb:.2f} GB |"


if __name__ == "__main__":
    main()
