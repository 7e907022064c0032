"""Score images from the command line, in-process (no Ray), or serve a scorer over HTTP:

    python -m rewards score --scorer ocr --images DIR --prompt 'a sign that says "open"'
    python -m rewards score --scorer pickscore --images DIR --prompts prompts.txt --model PATH
    python -m rewards score --scorer shapes_geneval --images DIR --prompts metadata.jsonl
    python -m rewards serve --scorer shapes_geneval [--host 127.0.0.1] [--port 8790] [--token-file F]
    python -m rewards questions PROMPTS_IN OUT.jsonl

`serve` (rewards/serve.py) answers the `remote` scorer; it prints `serving <scorer> on <url>` once it
listens (with --port 0, the port it picked). A host other than loopback needs --token-file.

`questions` (rewards/questions.py) writes PROMPTS_IN's records to OUT.jsonl, each with its atomic yes/no
`questions` for the `soft_tifa` scorer (kept where a record has them; rule-based, GenEval-template prompts only).

Images are the DIR's .png/.jpg/.jpeg/.webp files in name order. --prompts is a text file (one prompt
per line) or a .jsonl of GenEval records ({"tag", "include", "prompt", ...}), one per image; --prompt
gives every image the same prompt. Prints one line per image: file, reward, diagnostics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rewards.base import build_scorer, known_scorers

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def load_images(folder: Path) -> tuple[list[Path], list[np.ndarray]]:
    from PIL import Image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths, [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def load_prompts(args, count: int) -> tuple[list[str], list[dict]]:
    if args.prompt is not None:
        return [args.prompt] * count, [{} for _ in range(count)]
    path = Path(args.prompts)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in lines]
        prompts = [r["prompt"] for r in records]
    else:
        prompts, records = lines, [{} for _ in lines]
    if len(prompts) == 1:
        prompts, records = prompts * count, records * count
    if len(prompts) != count:
        raise SystemExit(f"{count} images but {len(prompts)} prompts in {path}")
    return prompts, records


def score(args) -> int:
    paths, images = load_images(Path(args.images))
    prompts, records = load_prompts(args, len(images))
    scorer = build_scorer(args.scorer, **scorer_options(args))
    rewards, total_s = [], 0.0
    for path, image, prompt, record in zip(paths, images, prompts, records, strict=True):
        start = time.perf_counter()
        result = scorer(image[None], [prompt], [record])
        total_s += time.perf_counter() - start
        diagnostics = " ".join(f"{k}={v[0]:.4f}" for k, v in result.diagnostics.items())
        print(f"{path.name}\treward={result.reward[0]:.4f}\t{diagnostics}")
        rewards.append(result.reward[0])
    print(f"# {args.scorer}: {len(rewards)} images, mean reward {np.mean(rewards):.4f}, "
          f"{total_s / len(rewards):.3f} s/image", file=sys.stderr)
    return 0


def scorer_options(args) -> dict:
    options = dict(json.loads(args.options)) if args.options else {}
    if args.model is not None:
        options["detector" if args.scorer == "geneval" else "model"] = args.model
    return options


def serve(args) -> int:
    from rewards.http_client import read_token
    from rewards.serve import RewardServer, check_bind
    from rewards.transport import Limits
    from rewards.worker import RewardWorker

    try:
        token = read_token(args.token_file, "serve")
        check_bind(args.host, token)  # before loading any weights
    except (OSError, ValueError) as err:
        raise SystemExit(f"python -m rewards serve: {err}") from None
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_images=args.max_images, max_side=args.max_side)
    server = RewardServer(RewardWorker(args.scorer, scorer_options(args)), host=args.host, port=args.port,
                          token=token, limits=limits)
    print(f"serving {args.scorer} on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


def questions(args) -> int:
    from rewards.questions import write_questions

    try:
        count = write_questions(args.prompts_in, args.out)
    except (OSError, ValueError) as err:
        raise SystemExit(f"python -m rewards questions: {err}") from None
    print(f"wrote {count} records with questions to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewards", description="flowray reward scorers")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("score", help="score a folder of images")
    cmd.add_argument("--scorer", required=True, choices=known_scorers())
    cmd.add_argument("--images", required=True, help="folder of images")
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help="text file (one prompt per line) or .jsonl of GenEval records")
    source.add_argument("--prompt", help="one prompt for every image")
    cmd.add_argument("--model", help="local folder or hub id of the scorer's weights (geneval: the detector)")
    cmd.add_argument("--options", help='JSON object of extra scorer options, e.g. \'{"reward": "strict"}\'')
    srv = commands.add_parser("serve", help="serve a scorer over HTTP for the `remote` scorer")
    srv.add_argument("--scorer", required=True, choices=known_scorers())
    srv.add_argument("--model", help="local folder or hub id of the scorer's weights (geneval: the detector)")
    srv.add_argument("--options", help="JSON object of extra scorer options")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; others need --token-file)")
    srv.add_argument("--port", type=int, default=8790, help="port (0: any free port, printed at start)")
    srv.add_argument("--token-file", help="file holding the bearer token every request must carry")
    srv.add_argument("--max-body-mb", type=float, default=256.0, help="largest request body accepted")
    srv.add_argument("--max-images", type=int, default=256, help="most images in one request")
    srv.add_argument("--max-side", type=int, default=4096, help="largest image height or width, in pixels")
    qs = commands.add_parser("questions", help="write a prompt file's atomic yes/no questions (soft_tifa)")
    qs.add_argument("prompts_in", help="prompt file (.jsonl or .txt)")
    qs.add_argument("out", help="output .jsonl: the records, each with its `questions`")
    args = parser.parse_args(argv)
    return {"serve": serve, "questions": questions}.get(args.command, score)(args)


if __name__ == "__main__":
    sys.exit(main())
