"""The GPU check (issue 32): a matrix of short runs (Flow-GRPO and DiffusionNFT, cluster.layout hybrid and
split, optionally FLUX's G2RPO), each asserted, then one summary table; exit status 1 if any row fails.

    python scripts/device_check.py --model-path DIR --output-dir DIR [--flux-path DIR] [--family MODEL=DIR ...]
        [--gpu] [--real-weights] [--only NAME:LAYOUT,...] [key=value | NAME:key=value ...]

Each run is its preset (configs/sd35_pickscore.yaml, configs/sd35_nft_pickscore.yaml,
configs/flux_g2rpo_hps.yaml; with --family: configs/sd35l_grpo_geneval.yaml, flux2_dev_grpo_pickscore.yaml,
flux2_klein_nft_pickscore.yaml, qwen_image_grpo_ocr.yaml, z_image_grpo_pickscore.yaml, wan_dancegrpo_video.yaml)
with its model swapped for the folder given, the `shapes_quality` reward (no downloaded weights; Wan's videos:
`video_shapes_quality` over 2 frames), 2 groups of 4 images per iteration and a tiny evaluation. Per run:

  1. 2 iterations with a checkpoint after each, then the evaluation (`Trainer.run`, as launch.py);
  2. ratio, clipfrac: the first minibatch of iteration 1 is on-policy: learner/first_minibatch_ratio_mean
     within 1e-3 of 1 and learner/first_minibatch_clipfrac == 0 (flow_grpo's FAQ). The forward-process
     family (DiffusionNFT) has no ratio: n/a;
  3. memory: each actor's peak GPU memory (torch's peak allocated) at most the memory plan's estimate of
     its kind (cluster/memory_plan.py `plan_memory`, what launch.py --dry-run prints). On CPU: skipped
     (host RSS counts the interpreter and libraries, which the plan does not);
  4. eval: eval.json and its per-image file are written, consistent, with a finite mean reward;
  5. resume: the run folder copied without its last checkpoint, resumed for the last iteration: every
     .safetensors of the last checkpoint (trainable weights, optimizer_rank*, the EMA, DiffusionNFT's
     old_policy) equal byte for byte to the straight run's.

With --gpu every actor shares the one GPU: hybrid gives its worker the whole GPU; split gives rollout actor
and learner rank 0.4 each and syncs through the object store (NCCL refuses two ranks on one GPU; preflight
refuses the collective backend there). Without --gpu the sizes are cut to what 2 cores run in minutes.
--real-weights (a local SD3.5-Medium diffusers folder) cuts the resolution to 256 px and the micro-batch to
4. `NAME:key=value` overrides only the rows of run NAME (flow_grpo, diffusion_nft, flux_g2rpo, sd35l_grpo,
flux2_grpo, flux2_klein_nft, qwen_image_grpo, z_image_grpo, wan_dancegrpo).
scripts/device_check.sh builds the real-width reduced-depth folders and runs this.
"""

# No `from __future__ import annotations`: tests load this file by path (tests/script_loader.py) without a
# sys.modules entry, where dataclasses cannot resolve string annotations.
import argparse
import json
import math
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATIO_TOLERANCE = 1e-3
ITERATIONS = 2


@dataclass(frozen=True)
class Case:
    """One run of the matrix: a preset on a model folder, in one cluster.layout."""

    name: str
    config: str
    model: str  # "sd35" or "flux": which folder it runs on
    layout: str

    @property
    def label(self) -> str:
        return f"{self.name}:{self.layout}"


RUNS = {"flow_grpo": ("configs/sd35_pickscore.yaml", "sd35"),
        "diffusion_nft": ("configs/sd35_nft_pickscore.yaml", "sd35"),
        "flux_g2rpo": ("configs/flux_g2rpo_hps.yaml", "flux"),
        # the other families' presets (--family NAME=DIR, device_check.sh's FAMILY), one hybrid row each
        "sd35l_grpo": ("configs/sd35l_grpo_geneval.yaml", "sd35l"),
        "flux2_grpo": ("configs/flux2_dev_grpo_pickscore.yaml", "flux2"),
        "flux2_klein_nft": ("configs/flux2_klein_nft_pickscore.yaml", "flux2_klein"),
        "qwen_image_grpo": ("configs/qwen_image_grpo_ocr.yaml", "qwen_image"),
        "z_image_grpo": ("configs/z_image_grpo_pickscore.yaml", "z_image"),
        "wan_dancegrpo": ("configs/wan_dancegrpo_video.yaml", "wan")}  # fmt: skip
# The models --family takes (SD3.5-Medium and FLUX.1 have --model-path and --flux-path).
FAMILY_MODELS = tuple(dict.fromkeys(m for _, m in RUNS.values() if m not in ("sd35", "flux")))
LAYOUTS = ("hybrid", "split")
FLUX_LAYOUTS = ("hybrid",)  # one FLUX row: its assertions are the per-step family's, already covered twice


def matrix(flux: bool, families: tuple[str, ...] = (), sd35: bool = True) -> list[Case]:
    """SD3.5-Medium's rows (`sd35`), FLUX.1's (`flux`), and a hybrid row per run of each model in `families`."""
    cases = [Case(name, config, model, layout) for name, (config, model) in RUNS.items() if model == "sd35" and sd35
             for layout in LAYOUTS]
    if flux:
        config, model = RUNS["flux_g2rpo"]
        cases += [Case("flux_g2rpo", config, model, layout) for layout in FLUX_LAYOUTS]
    return cases + [Case(name, config, model, "hybrid") for name, (config, model) in RUNS.items() if model in families]


# One GPU: hybrid's worker takes it whole; split's two actors share it, so the weights go through the object
# store (NCCL, the presets' collective sync, refuses two ranks on one GPU, and preflight refuses that).
GPU_SHARES = {"hybrid": ["cluster.learner_num_gpus=1", "cluster.rollout_num_gpus=0"],
              "split": ["cluster.learner_num_gpus=0.4", "cluster.rollout_num_gpus=0.4",
                        "cluster.sync_backend=object_store"]}  # fmt: skip
CPU_SHARES = ["cluster.learner_num_gpus=0", "cluster.rollout_num_gpus=0"]


def check_overrides(model_path: str, output_dir: str | Path, gpu: bool, layout: str = "split") -> list[str]:
    """The overrides that turn a preset into one small iteration on one machine (one GPU with `gpu`): 2 groups
    of 4 on the shapes prompts and reward, one learner rank and one rollout actor (scripts/multinode_real_width.py
    builds on them)."""
    return [
        f"model.path={model_path}", "iterations=1", "data.images_per_iteration=8", "sampling.group_size=4",
        "data.train_prompts=assets/prompts/shapes_train.jsonl", "data.test_prompts=assets/prompts/shapes_test.jsonl",
        "rewards.scorers=[{name: shapes_quality}]", "cluster.num_learner_ranks=1", "cluster.num_rollout_actors=1",
        "cluster.learner_num_cpus=1", "cluster.rollout_num_cpus=1", "cluster.async_mode=false",
        "logging.eval_base=false", "logging.tensorboard=false", f"logging.output_dir={output_dir}",
        f"cluster.layout={layout}", *(GPU_SHARES[layout] if gpu else CPU_SHARES),
    ]  # fmt: skip


# A matrix row on top: 2 iterations with a checkpoint after each (both kept), the split layout's weights
# through the object store on CPU too (as on one GPU), no probes, and an evaluation of 2 test prompts x 1 image
# (the data.eval_* nulls and zero turn the shapes prompts' powered evaluation off, as tests/tiny_models.py
# SMALL_EVAL does).
ROW = [
    f"iterations={ITERATIONS}", "logging.checkpoint_every=1", "logging.keep_checkpoints=2",
    "cluster.sync_backend=object_store", "cluster.include_dashboard=false", "logging.probe_every=0",
    "data.eval_num_prompts=2", "data.eval_images_per_prompt=1", "sampling.eval_num_steps=10",
    "data.eval_images_per_tag=null", "data.eval_max_halfwidth=null", "data.eval_max_halfwidth_overall=null",
    "data.eval_train_images_per_tag=0",
]  # fmt: skip
# FLUX's row: 512 px and branching at 2 of G2RPO's 8 steps (each group decodes and scores G x |M| x |Lambda|
# images: 16 instead of 64).
FLUX_SIZES = ["flux_g2rpo:model.resolution=512", "flux_g2rpo:algorithm.steps=[0, 1]"]
# Wan's row makes videos, which the image scorers refuse: the shapes reward over 2 of each video's frames.
VIDEO_REWARD = ["wan_dancegrpo:rewards.scorers=[{name: video_shapes_quality, options: {frames: 2}}]"]
# What 2 cores run in minutes: the real widths at 32 px, a few steps (the Flow-GRPO-Fast windows cut to them) and
# 5-frame Wan videos (its frame counts are 4k + 1).
CPU_SIZES = ["model.resolution=32", "model.max_sequence_length=8", "sampling.num_steps=3", "sampling.eval_num_steps=3",
             "cluster.torch_threads_per_actor=1", "diffusion_nft:algorithm.train_timesteps=2",
             "flux2_grpo:algorithm.window_range=[1, 3]", "qwen_image_grpo:algorithm.window_range=[0, 3]",
             "z_image_grpo:algorithm.window_range=[1, 3]", "wan_dancegrpo:model.num_frames=5"]  # fmt: skip
# SD3.5-Medium's real weights: 256 px and micro-batches of 4 keep the learner's activations in its 0.4 share.
REAL_WEIGHT_SIZES = ["model.resolution=256", "learner.micro_batch_size=4"]


def overrides_for(case: Case, model_path: str, output_dir: Path, gpu: bool, extra: list[str]) -> list[str]:
    """The overrides of one row: `check_overrides` in its layout, `ROW`, then `extra` (`key=value` for every
    row, `NAME:key=value` for the rows of run NAME only)."""
    own = []
    for item in extra:
        key = item.split("=", 1)[0]
        if ":" not in key:
            own.append(item)
        elif key.split(":", 1)[0] == case.name:
            own.append(item.split(":", 1)[1])
    return [*check_overrides(model_path, output_dir, gpu, case.layout), *ROW, *own]


# ----------------------------------------------------------------------------- the checks (pure)

PASS, FAIL, SKIP, NA = "pass", "FAIL", "skip", "n/a"


@dataclass
class Cell:
    """One check's result: its status and what the table shows."""

    status: str
    text: str

    def __str__(self) -> str:
        return self.text if self.status in (PASS, NA) else f"{self.status}: {self.text}"


def check_ratio(metrics: dict, expects_ratio: bool) -> tuple[Cell, Cell]:
    """(ratio, clipfrac) of iteration 1's first minibatch: on-policy, the ratio is 1 and nothing is clipped."""
    if not expects_ratio:
        return Cell(NA, "n/a"), Cell(NA, "n/a")
    mean, clip = metrics.get("learner/first_minibatch_ratio_mean"), metrics.get("learner/first_minibatch_clipfrac")
    if mean is None or clip is None:
        missing = Cell(FAIL, "not logged")
        return missing, missing
    ratio_ok = math.isfinite(mean) and abs(mean - 1.0) <= RATIO_TOLERANCE
    return (Cell(PASS if ratio_ok else FAIL, f"{mean:.6f}"), Cell(PASS if clip == 0 else FAIL, f"{clip:.4g}"))


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def check_memory(peaks: dict[str, dict], planned: dict[str, float | None], gpu: bool) -> Cell:
    """Each actor's peak GPU memory (GiB, common/memory.py) against its plan (bytes): the worst ratio shown.
    On CPU the check is skipped: the plan's figure is shown for reference."""
    if not gpu:
        plan = ", ".join(f"{a} {_gb(b)}" for a, b in planned.items() if b is not None)
        return Cell(SKIP, f"CPU (plan: {plan or 'none'})")
    worst, failures = None, []
    for actor, peak in peaks.items():
        plan = planned.get(actor)
        used = peak.get("gpu_peak_allocated_gb")
        if plan is None or used is None:
            failures.append(f"{actor}: {'no plan' if plan is None else 'no GPU peak'}")
            continue
        used_bytes = used * 2**30
        if used_bytes > plan:
            failures.append(f"{actor} {_gb(used_bytes)} > plan {_gb(plan)}")
        if worst is None or used_bytes / plan > worst[1] / worst[2]:
            worst = (actor, used_bytes, plan)
    if failures:
        return Cell(FAIL, "; ".join(failures))
    if worst is None:
        return Cell(FAIL, "no actor reported")
    actor, used_bytes, plan = worst
    return Cell(PASS, f"{actor} {_gb(used_bytes)} of {_gb(plan)}")


def check_eval(out_dir: Path) -> Cell:
    """eval.json and its per-image file exist, agree (cluster/evaluation.py `load_evaluation`) and score."""
    from cluster.evaluation import EvaluationFileError, load_evaluation

    try:
        summary, rows = load_evaluation(out_dir)
    except EvaluationFileError as err:
        return Cell(FAIL, str(err))
    means = {name: r["mean"] for name, r in summary.get("rewards", {}).items()}
    if not rows or not means or not all(math.isfinite(m) for m in means.values()):
        return Cell(FAIL, f"{len(rows)} images, rewards {means}")
    return Cell(PASS, f"{len(rows)} images, " + ", ".join(f"{n} {m:.3f}" for n, m in means.items()))


def check_resume(straight: Path, resumed: Path, required: list[str]) -> Cell:
    """Every .safetensors of the straight run's checkpoint equal byte for byte to the resumed run's; the
    `required` names must be among them."""
    names = sorted(p.name for p in straight.glob("*.safetensors"))
    missing = [n for n in required if n not in names] + [n for n in names if not (resumed / n).is_file()]
    if missing:
        return Cell(FAIL, f"missing {', '.join(missing)}")
    differ = [n for n in names if (straight / n).read_bytes() != (resumed / n).read_bytes()]
    if differ:
        return Cell(FAIL, f"{', '.join(differ)} differ")
    return Cell(PASS, f"bit-exact ({len(names)} files)")


@dataclass
class Row:
    case: Case
    cells: dict[str, Cell] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.status != FAIL for c in self.cells.values())


COLUMNS = ("ratio", "clipfrac", "memory", "eval", "resume")
HEADER = ("run", "layout", "ratio", "clipfrac", "peak memory vs plan", "eval", "resume", "seconds", "verdict")


def table(rows: list[Row]) -> str:
    """The summary table: one line per run, its checks, its seconds and PASS/FAIL (a run that raised shows
    its error under the table)."""
    lines = [[r.case.name, r.case.layout, *(str(r.cells.get(c, Cell(FAIL, "not run"))) for c in COLUMNS),
              f"{r.seconds:.0f}", "PASS" if r.ok else "FAIL"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(HEADER, *lines, strict=True)]
    fmt = " | ".join(f"{{:{w}}}" for w in widths)
    out = [fmt.format(*HEADER), "-+-".join("-" * w for w in widths), *(fmt.format(*line) for line in lines)]
    out += [f"{r.case.label}: {r.error}" for r in rows if r.error]
    return "\n".join(out)


# ----------------------------------------------------------------------------- one run


def planned_bytes(cfg, actors: dict[str, str]) -> dict[str, float | None]:
    """actor name -> its memory plan's estimate in bytes, from `plan_memory` (what launch.py --dry-run and
    preflight print); `actors` maps each actor to its plan's kind."""
    from cluster import memory_plan, model_specs
    from cluster.preflight import resolve_path
    from rewards.prompts import load_prompts

    spec = model_specs.pipeline_spec(Path(cfg.model.path), cfg.model.family)
    prompts = {k: len({r["prompt"] for r in load_prompts(resolve_path(getattr(cfg.data, k)))})
               for k in ("train_prompts", "test_prompts")}
    rewards = [model_specs.RewardSpec(0) for _ in cfg.rewards.scorers]  # reward actors are not checked here
    plans = {p.kind: p.total for p in memory_plan.plan_memory(
        cfg, spec, rewards, train_prompts=prompts["train_prompts"], test_prompts=prompts["test_prompts"])}
    return {actor: plans.get(kind) for actor, kind in actors.items()}


def actor_kinds(trainer) -> dict[str, tuple[object, str]]:
    """name -> (actor, its kind in the memory plan); a hybrid worker is both learner and rollout actor."""
    if trainer.rollouts is trainer.learners:
        return {f"hybrid-{r}": (a, "hybrid worker") for r, a in enumerate(trainer.learners)}
    kinds = {f"learner-{r}": (a, "learner rank") for r, a in enumerate(trainer.learners)}
    return kinds | {f"rollout-{i}": (a, "rollout actor") for i, a in enumerate(trainer.rollouts)}


def run_case(case: Case, model_path: str, out: Path, gpu: bool, extra: list[str]) -> Row:
    """The straight run (train, evaluate), its checks, then the resume from its first checkpoint."""
    import ray

    from algorithms.per_step import PerStepAlgorithm
    from cluster.config import REPO_ROOT, load_config
    from cluster.trainer import Trainer

    row, start = Row(case), time.perf_counter()
    straight, resumed = out / case.name / case.layout, out / case.name / f"{case.layout}_resumed"
    try:
        for folder in (straight, resumed):
            shutil.rmtree(folder, ignore_errors=True)
        cfg = load_config(REPO_ROOT / case.config, overrides_for(case, model_path, straight, gpu, extra))
        with Trainer(cfg) as trainer:
            trainer.run()
            actors = actor_kinds(trainer)
            peaks = {name: ray.get(a.peak_memory.remote()) for name, (a, _) in actors.items()}
        first = json.loads((straight / "metrics.jsonl").read_text().splitlines()[0])
        row.cells["ratio"], row.cells["clipfrac"] = check_ratio(first, isinstance(cfg.algorithm, PerStepAlgorithm))
        row.cells["memory"] = check_memory(peaks, planned_bytes(cfg, {n: k for n, (_, k) in actors.items()}), gpu)
        row.cells["eval"] = check_eval(straight)

        # The run folder copied without its last checkpoint, as if the run had stopped after iteration 1 (left
        # out of the copy rather than deleted from it: FLUX's fully fine-tuned checkpoints are gigabytes).
        last = f"iter_{ITERATIONS:06d}"
        checkpoints = straight / "checkpoints"
        shutil.copytree(straight, resumed, ignore=lambda d, _: {last} if Path(d) == checkpoints else set())
        resumed_cfg = load_config(REPO_ROOT / case.config, overrides_for(case, model_path, resumed, gpu, extra))
        with Trainer(resumed_cfg, resume=True) as trainer:
            if trainer.iteration != ITERATIONS - 1:
                raise RuntimeError(f"resumed at iteration {trainer.iteration}, expected {ITERATIONS - 1}")
            trainer.train()
        required = ["trainable.safetensors"]
        required += [f"optimizer_rank{r}.safetensors" for r in range(cfg.cluster.num_learner_ranks)]
        required += ["old_policy.safetensors"] if cfg.algorithm.sampling_policy_is_separate else []
        row.cells["resume"] = check_resume(straight / "checkpoints" / last, resumed / "checkpoints" / last, required)
    except Exception as err:  # the row fails with its error; the matrix goes on
        traceback.print_exc()
        row.error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    row.seconds = time.perf_counter() - start
    print(f"[device_check] {case.label}: {'PASS' if row.ok else 'FAIL'} in {row.seconds:.0f} s", flush=True)
    return row


# ----------------------------------------------------------------------------- the matrix


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", help="SD3.5 diffusers folder (real-width or SD3.5-Medium): the SD3.5 rows")
    p.add_argument("--family", action="append", default=[], metavar="MODEL=DIR",
                   help=f"a diffusers folder of MODEL ({', '.join(FAMILY_MODELS)}): its preset's hybrid row")
    p.add_argument("--flux-path", help="FLUX.1 diffusers folder: adds the flux_g2rpo row")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--gpu", action="store_true", help="put every actor on the one GPU")
    p.add_argument("--real-weights", action="store_true", help="--model-path holds SD3.5-Medium's real weights")
    p.add_argument("--only", metavar="NAME:LAYOUT,...", help="run only these rows, e.g. flow_grpo:hybrid,diffusion_nft:split")
    p.add_argument("overrides", nargs="*", help="key=value for every row, NAME:key=value for run NAME's rows")
    args = p.parse_args(argv)

    families = dict(item.split("=", 1) for item in args.family)
    unknown = sorted(set(families) - set(FAMILY_MODELS))
    if unknown or not (args.model_path or families):
        p.error(f"--family {','.join(unknown)}: not one of {', '.join(FAMILY_MODELS)}" if unknown
                else "give --model-path or --family")
    cases = matrix(flux=args.flux_path is not None, families=tuple(families), sd35=args.model_path is not None)
    if args.only:
        only = args.only.split(",")
        unknown = sorted(set(only) - {c.label for c in cases})
        if unknown:
            p.error(f"--only {','.join(unknown)}: not in the matrix ({','.join(c.label for c in cases)})")
        cases = [c for c in cases if c.label in only]
    extra = FLUX_SIZES + VIDEO_REWARD + ([] if args.gpu else CPU_SIZES) + (REAL_WEIGHT_SIZES if args.real_weights else []) + args.overrides
    paths = {"sd35": str(Path(args.model_path).resolve()) if args.model_path else None,
             "flux": str(Path(args.flux_path).resolve()) if args.flux_path else None,
             **{model: str(Path(folder).resolve()) for model, folder in families.items()}}
    out = Path(args.output_dir).resolve()

    import ray

    from cluster.config import REPO_ROOT, load_config
    from cluster.ray_init import cpu_demand, init_ray

    # Every row's config is loaded now, so a bad override stops the check before the first run.
    configs = [load_config(REPO_ROOT / c.config, overrides_for(c, paths[c.model], out, args.gpu, extra)) for c in cases]
    started = not ray.is_initialized()
    if started:  # a local Ray sized for the row that reserves the most
        init_ray(max(configs, key=cpu_demand))
    try:
        rows = [run_case(case, paths[case.model], out, args.gpu, extra) for case in cases]
    finally:
        if started:
            ray.shutdown()
    return report(rows, out, args.gpu)


def report(rows: list[Row], out: Path, gpu: bool) -> int:
    """Print the summary table, write it to `out`/device_check.txt; the exit status: 1 if any row failed."""
    text = table(rows)
    print(f"\n[device_check] {'GPU' if gpu else 'CPU'}, {sum(r.seconds for r in rows):.0f} s:\n{text}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.txt").write_text(text + "\n")
    failed = [r.case.label for r in rows if not r.ok]
    if failed:
        print(f"[device_check] FAILED: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
