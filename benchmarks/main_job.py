"""The main job, measured: README's first command (the default preset) with periodic evaluations.

    python benchmarks/main_job.py [--config configs/shapes_nft.yaml] [--eval-every 5] [--target 0.90]
                                  [--base-guidance 4.5] [--output outputs/main_job] [--write-docs]
                                  [key=value ...]

It runs exactly what `python launch.py` runs (Trainer.run on local Ray: base evaluation, training, final
evaluation, the paired comparison, curves.png, before_after.png, metrics.jsonl) and additionally
evaluates every `--eval-every` iterations, then prints, from the paired comparison of the final and base
evaluations (same prompts, same seeds, image by image): the accuracy per category with its 95% interval
and the change with its paired interval; the held-out check on the training prompts; the reward-hacking
watch (the `shapes_quality` scorer, weight 0 in the default preset: scored, never trained on); and the
job's wall time (evaluations included, as a user waits for it) and training time to the first
evaluation at or above `--target` and to the first whose paired gain over the base has a lower 95% end
of at least `--min-gain`. `--write-docs` (old name `--write-readme`) puts that report into docs/results.md
between its main-job markers and copies the two figures beside it in docs/. `--base-guidance W` also
evaluates the base model sampled with CFG scale W (the same prompts and seeds) and pairs the final policy
with it: a CFG-free run's gain over its own CFG-free base, and over the base as its card samples it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from cluster.config import DEFAULT_PRESET, load_config  # noqa: E402

BEGIN, END = "<!-- BEGIN MAIN JOB RESULTS -->", "<!-- END MAIN JOB RESULTS -->"
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
QUALITY = "shapes_quality"


def first_reaching(points: list[tuple[float, float]], level: float) -> float | None:
    """Training seconds of the first (seconds, value) point at or above `level`."""
    return next((t for t, value in points if value >= level), None)


def _fmt(value: float, ci: list[float] | None) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def report(base: dict, final: dict, comparison: dict, train_comparison: dict | None,
           points: list[tuple[float, float]], gain_points: list[tuple[float, float]], target: float,
           min_gain: float, iterations: int, job_s: float, eval_steps: int) -> str:
    """The main job's Markdown report. `points`: (training seconds, overall) of every evaluation;
    `gain_points`: (training seconds, lower 95% end of the paired gain over the base)."""
    acc = comparison["differences"]["accuracy"]
    tags = [t for t in TAGS if t in acc]
    lines = ["| category | base [95% CI] | final [95% CI] | change [paired 95% CI] |", "|---|---|---|---|"]
    for tag in [*tags, "overall"]:
        d = acc[tag]
        name = f"**{tag}**" if tag == "overall" else tag
        lines.append(f"| {name} | {_fmt(base[tag], base['ci'][tag])} | {_fmt(final[tag], final['ci'][tag])} | "
                     f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] |")
    watch = comparison["differences"].get(f"reward/{QUALITY}")
    if watch:
        d = watch["overall"]
        lines.append(f"| quality watch ({QUALITY}, not trained on) | {d['before']:.3f} | {d['after']:.3f} | "
                     f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] |")
    if train_comparison:
        d = train_comparison["differences"]["accuracy"]["overall"]
        lines.append(f"| training prompts, held-out seeds (overall) | {d['before']:.3f} | {d['after']:.3f} | "
                     f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] |")

    def when(pts: list[tuple[float, float]], level: float) -> str:
        t = first_reaching(pts, level)
        return "not reached" if t is None else f"{t / 60:.1f} min of training"

    per_tag = ", ".join(f"{t} {base['images_per_tag'][t]}" for t in tags)
    lines += ["", f"- iterations: {iterations}; training {points[-1][0] / 60:.1f} min; whole job {job_s / 60:.1f} min "
              "(base, periodic and final evaluations included)",
              f"- time to overall >= {target:.2f}: {when(points, target)}; to a paired gain whose lower 95% end is "
              f">= +{min_gain:.2f}: {when(gain_points, min_gain)}",
              f"- evaluation: {base['num_prompts']} test prompts, {base['num_images']} images ({per_tag}), "
              f"{eval_steps}-step ODE, one fixed seed per image, paired image by image; 95% intervals: "
              "bootstrap over each tag's images, the prompt set fixed (comparison.json also has `ci_prompts`)",
              *[f"- {v}" for v in comparison["verdicts"]]]
    return "\n".join(lines)


def against_base_guidance(comparison: dict, guidance: float) -> str:
    """The report's section pairing the final policy with the base sampled at CFG `guidance`."""
    from cluster.evaluation import comparison_table

    return (f"Against the base model sampled with CFG {guidance:g} (same prompts and seeds, paired image by image):"
            f"\n\n{comparison_table(comparison)}")


def base_at_guidance(cfg, out: Path, guidance: float) -> dict:
    """Evaluate the base model (no trained weights) of the run's config at CFG `guidance` into `out`, once,
    and pair the run's final evaluation with it."""
    from cluster.evaluation import compare_evaluations
    from cluster.run_evaluation import evaluate_in_process

    name = f"eval_base_cfg{guidance:g}"
    if not (out / f"{name}.json").is_file():
        model = cfg.model.model_copy(update={"guidance_scale": guidance, "eval_guidance_scale": None})
        evaluate_in_process(cfg.model_copy(update={"model": model}), output_dir=out, name=name)
    comparison = compare_evaluations(out, out, name=name, name_after="eval")
    (out / f"comparison_base_cfg{guidance:g}.json").write_text(json.dumps(comparison, indent=2))
    return comparison


def gain_points(out: Path, rows: list[dict], final_seconds: float) -> list[tuple[float, float]]:
    """(training seconds, lower 95% end of the paired gain over the base) of each test evaluation."""
    from cluster.evaluation import compare_evaluations

    seconds = {r["iteration"] + 1: r["charts/wall_seconds"] for r in rows}
    pts = [(0.0, 0.0)]
    for path in sorted(out.glob("eval_iter*.json")):
        c = compare_evaluations(out, out, name="eval_base", name_after=path.stem)
        pts.append((seconds[int(path.stem.removeprefix("eval_iter"))], c["differences"]["accuracy"]["overall"]["ci"][0]))
    c = compare_evaluations(out, out, name="eval_base", name_after="eval")
    pts.append((final_seconds, c["differences"]["accuracy"]["overall"]["ci"][0]))
    return pts


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_PRESET))
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--target", type=float, default=0.90)
    p.add_argument("--min-gain", type=float, default=0.10, help="the gain whose lower 95%% end the report times")
    p.add_argument("--base-guidance", type=float, default=None, metavar="W",
                   help="also pair the final policy with the base model sampled at CFG scale W")
    p.add_argument("--output", default="outputs/main_job")
    p.add_argument("--write-docs", "--write-readme", dest="write_docs", action="store_true",
                   help="write the report and its figures into docs/results.md (--write-readme: old name)")
    p.add_argument("--report-only", action="store_true",
                   help="do not train: report on the finished run in --output again (e.g. for --write-docs)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    import ray

    from cluster.plots import eval_points, plot_curves, read_metrics
    from cluster.ray_init import init_ray
    from cluster.trainer import Trainer

    out = Path(args.output)
    cfg = load_config(args.config, [*args.overrides, f"logging.output_dir={out}",
                                    f"logging.eval_every={args.eval_every}", "logging.eval_base=true"])
    base_path = out / "eval_base.json"
    if args.report_only:
        if not (out / "eval.json").is_file() or not base_path.is_file():
            raise SystemExit(f"--report-only: {out} holds no finished run (eval_base.json and eval.json)")
        final = json.loads((out / "eval.json").read_text())
        saved = json.loads((out / "main_job.json").read_text()) if (out / "main_job.json").is_file() else {}
        job_s, command = saved.get("job_s", float("nan")), saved.get("command")
        plot_curves(out / "metrics.jsonl", out / "curves.png", base=json.loads(base_path.read_text()), final=final)
    else:
        command = "python benchmarks/main_job.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        t0 = time.perf_counter()
        init_ray(cfg, log_to_driver=False)
        try:
            with Trainer(cfg) as trainer:
                final = trainer.run().summary
        finally:
            ray.shutdown()
        job_s = time.perf_counter() - t0
    base = json.loads(base_path.read_text())
    rows = read_metrics(out / "metrics.jsonl")
    points = eval_points(rows, base["overall"], final["overall"])
    gains = gain_points(out, rows, points[-1][0])
    comparison = json.loads((out / "comparison.json").read_text())
    train_file = out / "comparison_train.json"
    train_comparison = json.loads(train_file.read_text()) if train_file.is_file() else None
    text = report(base, final, comparison, train_comparison, points, gains, args.target, args.min_gain, len(rows),
                  job_s, cfg.sampling.eval_num_steps)
    versus_guidance = None
    if args.base_guidance is not None:
        versus_guidance = base_at_guidance(cfg, out, args.base_guidance)
        text += "\n\n" + against_base_guidance(versus_guidance, args.base_guidance)
    print(text, flush=True)
    result = {"command": command, "base": base, "final": final, "comparison": comparison,
              "train_comparison": train_comparison, "versus_base_guidance": versus_guidance, "points": points, "gain_points": gains,
              "iterations": len(rows), "job_s": job_s, "time_to_target_s": first_reaching(points, args.target),
              "time_to_min_gain_s": first_reaching(gains, args.min_gain)}
    (out / "main_job.json").write_text(json.dumps(result, indent=2))
    if args.write_docs:
        how = f"Generated by `{command}`" if command else "Generated by `python benchmarks/main_job.py`"
        if args.report_only:
            again = "--report-only" + (f" --base-guidance {args.base_guidance:g}" if args.base_guidance is not None else "")
            how += f" (this report rewritten from the run's files with `{again}`)"
        write_docs(f"{how} on this project's 2-core CPU machine.\n\n{text}", out)
    return result


def write_docs(text: str, out: Path, page: Path | None = None) -> Path:
    """The report into the main-job block of `page` (default: docs/results.md), the run's two figures copied
    beside the page as main_job_*.png and linked relative to it. Returns the page."""
    from readme_section import page_of, replace_between

    page = page_of(BEGIN) if page is None else page
    links = []
    for name, alt in (("curves.png", "curves"), ("before_after.png", "before / after")):
        copy = page.parent / f"main_job_{name}"
        shutil.copyfile(out / name, copy)
        links.append(f"![{alt}]({os.path.relpath(copy, page.parent)})")
    return replace_between(BEGIN, END, f"{text}\n\n" + "\n\n".join(links) + "\n", page)


if __name__ == "__main__":
    main()
