"""The cost model's FLOP counts against measured seconds on this CPU, and the presets' cost tables.

    python benchmarks/cost_calibration.py [--models DIR] [--repeats 5] [--skip-real-width]
    python benchmarks/cost_calibration.py --presets

The first form times each component the cost model (cluster/cost_model.py) counts, through the project's
own code (Policy.velocity, Policy.decode, a CLIP scorer's towers), in float32 on one thread, and divides the
CPU seconds of the fastest of --repeats calls by the FLOPs the model counts for it. The seconds are process
time, and the components take turns call by call, so that a busy spell of a shared machine slows them
alike. If the counts are right, every component costs about the same seconds per FLOP on one machine,
which is what lets one utilisation stand for them all. Beside each count, torch's FlopCounterMode total for the same call (attention through the math
kernel, which it counts) shows that the count is the work actually done. Two sets:
- shapes: the shipped tiny model at configs/shapes_nft.yaml's settings (32 px; calls of ~1 ms, where
  per-call overheads weigh);
- real width: the published widths at reduced depth (scripts/build_real_width.py; built once into
  --models): SD3.5-Medium with configs/sd35_geneval.yaml's LoRA and CFG, FLUX.1-dev fully fine-tuned as
  configs/flux_dancegrpo_hps.yaml, their VAE, and a CLIP with ViT-H/14's widths (PickScore's).
Each set is judged against its own median: the target is every component within 30% of it.

The second form prints, for every configs/sd35_*.yaml and configs/flux_*.yaml, the cost model's iteration
time and busy shares for the preset's layout and for the other one on the same GPUs (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = ("shapes_nft", [])
# The real-width cases: preset, transformer layers of the reduced-depth build, overrides. 256 px and 32 T5
# tokens keep one forward to seconds on one core; the widths are the published ones.
REAL = {
    "sd35": ("sd35_geneval", 2, ["model.resolution=256", "model.max_sequence_length=32"]),
    "flux": ("flux_dancegrpo_hps", 1, ["model.resolution=256", "model.max_sequence_length=32"]),
}
CPU = ["model.dtype=float32", "learner.precision=fp32"]  # CPU timings in float32 (bf16 matmuls are emulated)
PROMPT = "a photo of a red circle"
CLIP_H_WIDTHS = {"vision": {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16,
                            "image_size": 224, "patch_size": 14},
                 "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16}}  # fmt: skip


def cpu_seconds(fn) -> float:
    """CPU seconds of this process for one call (time.process_time: what other processes on a shared
    machine take is not counted)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def torch_flops(fn) -> float:
    """FlopCounterMode's total for one call, attention through the math kernel (which it counts)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _unit(cfg, folder: Path, text_tokens: int):
    """The cost model's unit costs, for the text sequence the policy really builds: the shipped model's CLIP
    tokenizers stop at 16 tokens (scripts/build_tiny_sd3.py), where the family table counts SD3's 77."""
    from dataclasses import replace

    from cluster import cost_model, model_specs

    spec = model_specs.pipeline_spec(folder, cfg.model.family)
    spec = replace(spec, clip_tokens=text_tokens - cfg.model.max_sequence_length)
    accelerator = cost_model.ACCELERATORS[0]
    weights = [[] for _ in cfg.rewards.scorers]
    return cost_model.unit_costs(cfg, spec, weights, accelerator, cost_model.vae_config_of(folder))


def model_cases(
    label: str, preset: str, overrides: list[str], folder: Path | None, rows: int, checkpointing: bool
):
    """(name, call, counted FLOPs) of one model's sampling forward, learner step and VAE decode."""
    import torch

    from cluster.config import load_config
    from models.policy import Policy

    over = [*CPU, *overrides] + ([f"model.path={folder}"] if folder else [])
    cfg = load_config(REPO / "configs" / f"{preset}.yaml", over)
    folder = Path(cfg.model.path)
    policy = Policy.from_config(cfg.model)
    cond = policy.conditioning(PROMPT)
    text = cond.embeds.shape[1]
    unit = _unit(cfg, folder, text)
    cfg_rows = policy.family.rows_per_sample(cfg.model.guidance_scale)
    x = policy.initial_noise(rows, torch.Generator().manual_seed(0))

    def sample():
        with torch.no_grad():
            policy.velocity(x, 0.5, cond)

    def learn():
        policy.velocity(x, 0.5, cond).square().mean().backward()

    decode_images = max(1, rows // 2)

    def decode():
        policy.decode(x[:decode_images])

    cases = [
        (f"{label} sampling forward ({rows * cfg_rows} rows)", sample, rows * cfg_rows * unit.sample_row)
    ]
    trained = "LoRA" if cfg.model.lora.enabled else "full"
    for ckpt in [False, True] if checkpointing else [cfg.model.gradient_checkpointing]:

        def step(ckpt=ckpt):
            policy.set_gradient_checkpointing(ckpt)
            learn()

        cfg_ckpt = cfg.model.model_copy(update={"gradient_checkpointing": ckpt})
        flops = rows * cfg_rows * _unit(cfg.model_copy(update={"model": cfg_ckpt}), folder, text).train_row
        name = f"{label} learner forward + backward ({rows * cfg_rows} rows, {trained}{', checkpointing' if ckpt else ''})"
        cases.append((name, step, flops))
    cases.append((f"{label} VAE decode ({decode_images} x {cfg.model.resolution} px)", decode,
                  decode_images * unit.decode_image))  # fmt: skip
    return cases


def clip_case(models: Path, layers: int = 2, images: int = 2):
    """A CLIP with ViT-H/14's widths (PickScore's) at `layers` layers per tower: one image's towers and one
    prompt at the 77 tokens the cost model counts."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from cluster.cost_model import reward_flops

    folder = models / f"clip-h-width-layers{layers}"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        config = CLIPConfig(text_config={**CLIP_H_WIDTHS["text"], "num_hidden_layers": layers, "vocab_size": 1000},
                            vision_config={**CLIP_H_WIDTHS["vision"], "num_hidden_layers": layers},
                            projection_dim=1024)  # fmt: skip
        CLIPModel(config).save_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    pixels = torch.randn(images, 3, 224, 224)
    tokens = torch.randint(0, 1000, (images, 77))

    def score():
        with torch.no_grad():
            model.get_image_features(pixel_values=pixels)
            model.get_text_features(input_ids=tokens)

    return (f"CLIP ViT-H/14 widths, {layers} layers per tower ({images} images)", score,
            images * reward_flops([str(folder)])[0])  # fmt: skip


def calibrate(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sets = {"shapes (the shipped model)": model_cases("shapes", *SHAPES, None, rows=8, checkpointing=False)}
    if not args.skip_real_width:
        sys.path.insert(0, str(REPO / "scripts"))
        from build_real_width import FAMILIES, build

        real = []
        for family, (preset, layers, overrides) in REAL.items():
            folder = args.models / f"layers{layers}" / FAMILIES[family][0]
            if not (folder / "model_index.json").is_file():
                build(folder.parent, family, layers)
            real += model_cases(f"{family} real width, {layers} layer(s)", preset, overrides, folder,
                                rows=2 if family == "sd35" else 1, checkpointing=family == "sd35")  # fmt: skip
        real.append(clip_case(args.models))
        sets["real width, reduced depth"] = real
    print(f"# cost_calibration: {args.threads} thread(s), float32, torch {torch.__version__}; CPU seconds of the "
          f"fastest of {args.repeats} calls, the components taking turns", flush=True)  # fmt: skip
    cases = [case for group in sets.values() for case in group]
    best = {name: float("inf") for name, _, _ in cases}
    for _, fn, _ in cases:  # warm-up
        fn()
    for _ in range(args.repeats):  # round robin: a busy spell of the machine slows every component alike
        for name, fn, _ in cases:
            best[name] = min(best[name], cpu_seconds(fn))
    for title, group in sets.items():
        rows = [(name, counted, torch_flops(fn), best[name]) for name, fn, counted in group]
        median = statistics.median(s / c for _, c, _, s in rows)
        print(f"\n{title}: the median component runs at {1 / median / 1e9:.1f} counted GFLOP/s\n")
        print("| component | counted GFLOP | torch's count | seconds | GFLOP/s | s per FLOP / median |")
        print("|---|---|---|---|---|---|")
        for name, counted, counter, seconds in rows:
            ratio = seconds / counted / median
            flag = "" if abs(ratio - 1) <= 0.3 else " (outside 30%)"
            print(f"| {name} | {counted / 1e9:.3f} | {counter / counted:.3f} x | {seconds:.3f} | "
                  f"{counted / seconds / 1e9:.1f} | {ratio:.2f}{flag} |")  # fmt: skip


def presets_table() -> None:
    """The cost model of every SD3.5 and FLUX preset: its layout and the other one on the same GPUs."""
    from cluster.config import load_config
    from cluster.cost_model import CostReport, estimate_for

    print("| preset | layout | iteration (s) | sampling + training + sync (s) | busy share per GPU |")
    print("|---|---|---|---|---|")
    for path in sorted([*REPO.glob("configs/sd35_*.yaml"), *REPO.glob("configs/flux_*.yaml")]):
        report = estimate_for(load_config(path))
        if not isinstance(report, CostReport):
            print(f"| {path.stem} | {report} | | | |")
            continue
        for name, cost in ((path.stem, report.chosen), ("", report.other)):
            phases = " + ".join(f"{v:.1f}" for v in cost.phases.values())
            print(
                f"| {name} | {cost.layout.describe()} | {cost.iteration:.1f} | {phases} | {share_cells(cost)} |"
            )


def share_cells(cost) -> str:
    """'GPU 0-4 (learner rank, geneval reward actor) 63%; ...': consecutive GPUs with the same actors and the
    same rounded share as one cell."""
    from cluster.cost_model import role_kinds

    cells: list[list] = []  # [first, last, kinds, percent]
    for d in cost.devices:
        kinds = ", ".join(k.split(" x ", 1)[-1] for k in role_kinds(d.roles))
        percent = round(100 * d.busy / cost.iteration)
        if cells and cells[-1][1] == d.index - 1 and cells[-1][2:] == [kinds, percent]:
            cells[-1][1] = d.index
        else:
            cells.append([d.index, d.index, kinds, percent])
    return "; ".join(f"GPU {a}{'' if a == b else f'-{b}'} ({k}) {p}%" for a, b, k, p in cells)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=REPO / "outputs" / "real_width_models")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-real-width", action="store_true", help="only the shipped tiny model (seconds)")
    p.add_argument("--presets", action="store_true", help="print the presets' cost tables instead")
    args = p.parse_args()
    presets_table() if args.presets else calibrate(args)


if __name__ == "__main__":
    main()
