"""Does a policy read the relation word? Position prompts sampled beside their mirror at the same seeds.

    python benchmarks/direction_probe.py [--model assets/models/shapes-sd3-tiny] [--lora RUN/checkpoints/iter_N]
                                         [--seeds 40] [--steps 20] [--guidance 1.0] [--velocity] [--output FILE.json]

For every position record of the shapes world ("a circle left of a square", 24 of them) and each seed, the
policy samples the prompt and its mirror ("a circle right of a square": left <-> right, above <-> below)
from the same initial noise (20-step Euler ODE, CFG-free as the main job). The detector reads both images
and the GenEval rule gives the relations that hold between the two objects. Reported, per axis and overall:
- accuracy: the asked relation holds (GenEval's position verdict, both objects found);
- direction effect: P(R holds | asked R) - P(R holds | asked mirror(R)), over the pairs where both images
  show both objects. A policy blind to the word has an effect of 0 (the same noise gives the same layout
  whatever the word); one that always obeys has 1;
- layout flips: the share of those pairs whose two images differ in the relation that holds;
- the text towers: the cosine between the relation token's final hidden states for the two prompts (per
  tower, mean over records).
The base model's effect against a trained policy's says whether RL taught the policy to read the word.
With `--velocity`, also how far the relation word moves the velocity at the same x_t, against an object word
and against the whole prompt, per noise level (word_effects).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rewards.shapes.world import AXIS  # noqa: E402
from rewards.shapes.world import mirrored_position as mirrored  # noqa: E402


def relations_found(image: np.ndarray, record: dict) -> set[str] | None:
    """The relations of the subject to the target in `image` (None unless exactly one of each is read)."""
    from rewards.geneval_rules import relative_position
    from rewards.shapes.detector import detect

    found = detect(image)
    target, subject = (c["class"] for c in record["include"])
    objects = {cls: [o for o in found.objects if o.label == cls] for cls in (target, subject)}
    if not found.valid or any(len(v) != 1 for v in objects.values()):
        return None
    return relative_position(objects[subject][0].box, objects[target][0].box)


def token_cosines(policy, record: dict) -> list[float]:
    """Per text tower: cosine of the final hidden state at the relation word's first token, prompt vs mirror."""
    return [layers[-1] for layers in layer_cosines(policy, record)]


def layer_cosines(policy, record: dict) -> list[list[float]]:
    """Per text tower, per hidden state (0: the token embedding plus position, then each layer's output): the
    cosine at the relation word's first token, prompt vs mirror. Where the sign of a relation is lost shows
    here: in the input embedding (the two words learned alike) or in the layers (read alike in context)."""
    pipe, out = policy.pipe, []
    prompts = [record["prompt"], mirrored(record)["prompt"]]
    for tok_name, enc_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        tok, enc = getattr(pipe, tok_name), getattr(pipe, enc_name)
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        differ = (ids[0] != ids[1]).nonzero()
        with torch.no_grad():
            hidden = enc(ids.to(policy.device), output_hidden_states=True).hidden_states
        if not len(differ):
            out.append([1.0] * len(hidden))
            continue
        i = int(differ[0])
        out.append([float(torch.nn.functional.cosine_similarity(h[0, i], h[1, i], dim=0)) for h in hidden])
    return out


def swapped_subject(record: dict) -> dict:
    """The record with its subject drawn as another shape (same relation, same target)."""
    from rewards.shapes.world import SHAPES, position

    target, subject = record["include"]
    other = next(c for c in SHAPES if c not in (subject["class"], target["class"]))
    return position(other, subject["position"][0], target["class"])


def word_effects(policy, seeds: int, steps: int, guidance: float, levels=(1.0, 0.8, 0.6, 0.4)) -> dict:
    """How much the relation word moves the velocity, against an object word, at the same x_t.

    For each position record and seed, x_t = (1 - sigma) x0 + sigma eps on the straight path from the
    prompt's own ODE sample x0 to its initial noise eps; at each sigma the velocity for the prompt (v_P),
    its mirror (v_M), the prompt with the subject drawn as another shape (v_O) and the empty prompt (v_0).
    Reported per sigma, as means over records and seeds: |v_P - v_M| / |v_P - v_O| (the relation word's
    pull as a share of an object word's) and |v_P - v_M| / |v_P - v_0| (as a share of the whole prompt's).
    The layout is chosen at high sigma: a word read only at low sigma cannot move it."""
    from models.sampling import euler_sample
    from rewards.shapes.world import all_records

    sigmas = policy.sigmas(steps, 3.0, "static")
    ratios = {level: {"vs_object": [], "vs_prompt": []} for level in levels}
    for record in all_records()["position"]:
        seed_list = [1000 + s for s in range(seeds)]
        noise = torch.cat([policy.initial_noise(1, torch.Generator().manual_seed(s)) for s in seed_list])
        x0 = euler_sample(policy.velocity_fn(record["prompt"], guidance), noise, sigmas)  # eval_sample's noise per seed
        prompts = [record["prompt"], mirrored(record)["prompt"], swapped_subject(record)["prompt"], ""]
        with torch.no_grad():
            for level in levels:
                x = (1 - level) * x0 + level * noise
                v_p, v_m, v_o, v_0 = (policy.velocity_fn(q, guidance)(x, level).flatten(1) for q in prompts)
                word = (v_p - v_m).norm(dim=1)
                ratios[level]["vs_object"] += (word / (v_p - v_o).norm(dim=1)).tolist()
                ratios[level]["vs_prompt"] += (word / (v_p - v_0).norm(dim=1)).tolist()
    return {f"sigma_{level:g}": {k: float(np.mean(v)) for k, v in r.items()} for level, r in ratios.items()}


def probe(policy, seeds: int, steps: int, guidance: float) -> dict:
    from models.sampling import eval_sample
    from rewards.shapes.world import all_records

    sigmas = policy.sigmas(steps, 3.0, "static")
    stats = {a: {"asked": 0, "holds": 0, "pairs": 0, "holds_asked": 0, "holds_mirror": 0, "flips": 0}
             for a in ("horizontal", "vertical")}
    cosines = []
    for record in all_records()["position"]:
        relation = record["include"][1]["position"][0]
        mirror = mirrored(record)
        seed_list = [1000 + s for s in range(seeds)]
        images = {}
        for r in (record, mirror):
            latents = eval_sample(policy.velocity_fn(r["prompt"], guidance), policy.initial_noise, sigmas, seeds=seed_list)
            images[r["prompt"]] = policy.decode(latents).cpu().numpy()
        s = stats[AXIS[relation]]
        for a_img, m_img in zip(images[record["prompt"]], images[mirror["prompt"]], strict=True):
            asked, other = relations_found(a_img, record), relations_found(m_img, record)  # both read as subject-to-target
            s["asked"] += 1
            s["holds"] += int(asked is not None and relation in asked)
            if asked is not None and other is not None:
                s["pairs"] += 1
                s["holds_asked"] += int(relation in asked)
                s["holds_mirror"] += int(relation in other)
                s["flips"] += int(asked != other)
        cosines.append(layer_cosines(policy, record))
    report = {}
    for axis, s in stats.items():
        pairs = max(s["pairs"], 1)
        report[axis] = {"accuracy": s["holds"] / s["asked"], "pairs": s["pairs"],
                        "direction_effect": (s["holds_asked"] - s["holds_mirror"]) / pairs,
                        "layout_flips": s["flips"] / pairs}
    report["tower_cosine"] = [float(np.mean([c[i][-1] for c in cosines])) for i in range(2)]
    report["tower_cosine_by_layer"] = [np.mean([c[i] for c in cosines], axis=0).round(4).tolist() for i in range(2)]
    return report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="assets/models/shapes-sd3-tiny")
    p.add_argument("--lora", help="a checkpoint folder (its trainable.safetensors) to load into the policy")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--velocity", action="store_true",
                   help="also the relation word's pull on the velocity at the same x_t (word_effects)")
    p.add_argument("--output")
    args = p.parse_args(argv)
    from safetensors.torch import load_file

    from models.config import LoraSettings, ModelConfig
    from models.policy import Policy

    torch.set_num_threads(2)
    lora = LoraSettings(enabled=args.lora is not None, rank=args.lora_rank, alpha=2 * args.lora_rank)
    policy = Policy.from_config(ModelConfig(path=args.model, resolution=32, guidance_scale=args.guidance, lora=lora))
    if args.lora:
        policy.load_trainable(load_file(str(Path(args.lora) / "trainable.safetensors")))
    report = probe(policy, args.seeds, args.steps, args.guidance)
    if args.velocity:
        report["word_effects"] = word_effects(policy, args.seeds, args.steps, args.guidance)
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
