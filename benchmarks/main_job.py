"""The main job, measured: README's first command (the default preset) with periodic evaluations.

    python benchmarks/main_job.py [--config configs/shapes_flowgrpo.yaml] [--eval-every 5] [--target 0.90]
                                  [--output outputs/main_job] [--write-readme] [key=value ...]

It runs exactly what `python launch.py` runs (Trainer.run on local Ray: base evaluation, training, final
evaluation, curves.png, before_after.png, metrics.jsonl) and additionally evaluates every
`--eval-every` iterations, then prints the base and final shapes-GenEval accuracy per category, the
gain, the training wall time (evaluations excluded) to the first evaluation at or above `--target` and
at or above base + 0.25, and the reward-hacking watch: the `shapes_quality` scorer's mean (a
prompt-independent cleanliness signal, weight 0 in the default preset, so it is scored but never
trained on) at the base and final evaluations. `--write-readme` puts that report into README between
its main-job markers and copies the two figures to docs/.
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

from cluster.config import REPO_ROOT, load_config  # noqa: E402

BEGIN, END = "<!-- BEGIN MAIN JOB RESULTS -->", "<!-- END MAIN JOB RESULTS -->"
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
QUALITY = "shapes_quality"


def first_reaching(points: list[tuple[float, float]], level: float) -> float | None:
    """Training seconds of the first (seconds, accuracy) evaluation point at or above `level`."""
    return next((t for t, acc in points if acc >= level), None)


def report(base: dict, final: dict, points: list[tuple[float, float]], target: float, iterations: int,
           job_s: float, eval_steps: int) -> str:
    tags = [t for t in TAGS if t in base]
    lines = ["| category | base | final | change |", "|---|---|---|---|"]
    for tag in [*tags, "overall"]:
        b, f = base[tag], final[tag]
        name = f"**{tag}**" if tag == "overall" else tag
        lines.append(f"| {name} | {b:.3f} | {f:.3f} | {f - b:+.3f} |")
    if QUALITY in base.get("rewards", {}) and QUALITY in final.get("rewards", {}):
        b, f = base["rewards"][QUALITY]["mean"], final["rewards"][QUALITY]["mean"]
        lines.append(f"| quality watch ({QUALITY}, not trained on) | {b:.3f} | {f:.3f} | {f - b:+.3f} |")

    def when(level: float) -> str:
        t = first_reaching(points, level)
        return "not reached" if t is None else f"{t / 60:.1f} min"

    gain = base["overall"] + 0.25
    lines += ["", f"- iterations: {iterations}; training wall time {points[-1][0] / 60:.1f} min (evaluations "
              f"excluded); whole job {job_s / 60:.1f} min",
              f"- time to overall >= {target:.2f}: {when(target)}; to base + 0.25 = {gain:.2f}: {when(gain)}",
              f"- evaluation: {final['num_prompts']} test prompts x {final['images_per_prompt']} images, "
              f"{eval_steps}-step ODE, fixed seeds"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "shapes_flowgrpo.yaml"))
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--target", type=float, default=0.90)
    p.add_argument("--output", default="outputs/main_job")
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="do not train: report on the finished run in --output again (e.g. to rewrite README)")
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
    text = report(base, final, points, args.target, len(rows), job_s, cfg.sampling.eval_num_steps)
    print(text, flush=True)
    result = {"command": command, "base": base, "final": final, "points": points, "iterations": len(rows), "job_s": job_s,
              "time_to_target_s": first_reaching(points, args.target),
              "time_to_gain_s": first_reaching(points, base["overall"] + 0.25)}
    (out / "main_job.json").write_text(json.dumps(result, indent=2))
    if args.write_readme:
        from readme_section import replace_between

        for name in ("curves.png", "before_after.png"):
            shutil.copyfile(out / name, REPO_ROOT / "docs" / f"main_job_{name}")
        how = f"Generated by `{command}`" if command else "Generated by `python benchmarks/main_job.py`"
        if args.report_only:
            how += " (this report rewritten from the run's files with `--report-only`)"
        replace_between(BEGIN, END, f"{how} on this project's 2-core CPU machine.\n\n{text}\n\n"
                        "![curves](docs/main_job_curves.png)\n\n![before / after](docs/main_job_before_after.png)\n")
    return result


if __name__ == "__main__":
    main()
