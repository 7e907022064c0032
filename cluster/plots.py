"""Pictures of a run: the reward/accuracy curve from metrics.jsonl, and image grids readable on their own:
a title, the prompt of each row, a verdict mark on each image (GenEval's `correct`: a green frame and
check, or a red frame and cross; the reward under the image where a scorer gives no verdict) and column
headings. Plain arrays and captions in, pictures out: cluster.evaluation builds the captions."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def eval_points(rows: list[dict], base_overall: float, final_overall: float,
                x_keys: tuple[str, ...] = ("charts/wall_seconds",)) -> list[tuple[float, ...]]:
    """A run's accuracy curve as (x..., overall) points: the base policy at x = 0, each periodic
    evaluation logged in metrics.jsonl, and the final evaluation at the last iteration's x."""
    points = [(*(0.0 for _ in x_keys), base_overall)]
    points += [(*(r[k] for k in x_keys), r["eval/overall"]) for r in rows if "eval/overall" in r]
    points.append((*(rows[-1][k] for k in x_keys), final_overall))
    return points


def ema_smooth(values: list[float], weight: float = 0.9) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing): s_t = w s_{t-1} + (1 - w) x_t,
    divided by 1 - w^t so the first points are not pulled towards 0; NaN points are skipped."""
    out, acc, norm = [], 0.0, 0.0
    for x in values:
        if x is not None and np.isfinite(x):
            acc, norm = weight * acc + (1 - weight) * x, weight * norm + (1 - weight)
        out.append(acc / norm if norm else np.nan)
    return np.asarray(out, dtype=np.float64)


def _evaluations(folder: Path, rows: list[dict], base: dict | None, final: dict | None) -> list[tuple[int, dict]]:
    """(iterations completed, summary) of every test evaluation of a run, base and final included."""
    out = [(0, base)] if base else []
    for path in sorted(folder.glob("eval_iter*.json")):
        out.append((int(path.stem.removeprefix("eval_iter")), json.loads(path.read_text())))
    if final:
        out.append((rows[-1]["iteration"] + 1 if rows else 0, final))
    return [(i, e) for i, e in out if "overall" in e]


def plot_curves(metrics_path: str | Path, out_png: str | Path, *, base: dict | None = None,
                final: dict | None = None, smoothing: float = 0.9) -> Path:
    """The training monitor as one picture, three panels:
    (1) training reward per iteration (raw points faint, EMA bold) and the quality watch (a scorer of
        weight 0, e.g. shapes_quality);
    (2) training reward per tag (EMA);
    (3) accuracy: the probe set (fixed prompts and seeds, sampling policy: paired over time) overall
        and per tag, and every test evaluation's overall with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(metrics_path).parent
    rows = read_metrics(metrics_path)
    its = np.array([r["iteration"] + 1 for r in rows])
    fig, (ax_r, ax_t, ax_a) = plt.subplots(1, 3, figsize=(16, 4.2), dpi=110)

    def raw_and_smooth(ax, key: str, label: str, color: str) -> None:
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(its, [np.nan if v is None else v for v in values], ".", color=color, alpha=0.25, ms=3)
            ax.plot(its, ema_smooth(values, smoothing), color=color, label=label)

    raw_and_smooth(ax_r, "reward/mean", "train reward", "C0")
    raw_and_smooth(ax_r, "reward/accuracy", "train accuracy", "C1")
    scorers = sorted({k.split("/")[1] for r in rows for k in r if k.count("/") == 2 and k.startswith("reward/")
                      and k.endswith("/mean") and not k.startswith("reward/tag/")})
    for i, name in enumerate(scorers):  # each reward model, the watches (weight 0) among them
        raw_and_smooth(ax_r, f"reward/{name}/mean", name, f"C{2 + i}")
    ax_r.set_title(f"training reward (EMA {smoothing}, raw faint)")

    tags = sorted({k.removeprefix("reward/tag/") for r in rows for k in r if k.startswith("reward/tag/")})
    for i, tag in enumerate(tags):
        ax_t.plot(its, ema_smooth([r.get(f"reward/tag/{tag}") for r in rows], smoothing), color=f"C{i}", label=tag)
    ax_t.set_title("training reward per tag (EMA)")

    probes = sorted((folder / "probes").glob("probe_*.json")) if (folder / "probes").is_dir() else []
    if probes:
        summaries = [json.loads(p.read_text()) for p in probes]
        x = [int(p.stem.removeprefix("probe_")) for p in probes]
        probe_tags = [k for k in summaries[0].get("ci", {}) if k != "overall"]
        for i, tag in enumerate(probe_tags):
            ax_a.plot(x, [s.get(tag, np.nan) for s in summaries], color=f"C{i}", alpha=0.45, lw=1, label=f"probe {tag}")
        ax_a.plot(x, [s.get("overall", np.nan) for s in summaries], color="black", lw=1.5, label="probe overall")
    evals = _evaluations(folder, rows, base, final)
    if evals:
        x = [i for i, _ in evals]
        y = np.array([e["overall"] for _, e in evals])
        ci = np.array([e.get("ci", {}).get("overall", [v, v]) for (_, e), v in zip(evals, y, strict=True)])
        ax_a.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], fmt="o--", color="red", capsize=3,
                      label="test eval overall (95% CI)")
    ax_a.set_title("accuracy")
    for ax in (ax_r, ax_t, ax_a):
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- image grids


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile [N, H, W, 3] images into one [rows*H, columns*W, 3] image (1 px grey gutters), uncaptioned."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    return grid


def display_scale(image_side: int, target: int = 128, max_scale: int = 4) -> int:
    """Nearest-neighbour upscaling for a grid of `image_side`-pixel images: the shapes world's 32 px
    images are enlarged (x4) to be seen; 128 px and larger are left as they are (512 px x4 would make a
    16k-pixel-wide PNG)."""
    return max(1, min(max_scale, target // image_side))


def save_png(array: np.ndarray, path: Path, image_side: int) -> None:
    """Write an uncaptioned grid of `image_side`-pixel tiles, upscaled only when the tiles are tiny."""
    img = Image.fromarray(array)
    scale = display_scale(image_side)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


# ----------------------------------------------------------------------------- captioned grids

GAP = 6  # px around tiles
LABEL_WIDTH = 190  # px of the prompt column
LINE = 16  # px per line of text
MARK_COLORS = {True: (30, 150, 60), False: (210, 40, 40), None: (200, 200, 200)}


@dataclass(frozen=True)
class Caption:
    """What a picture says of one image: its prompt and tag, GenEval's verdict (None: the scorers give
    none) and its reward, written under the image when there is no verdict to show."""

    prompt: str
    tag: str = ""
    correct: bool | None = None
    reward: float | None = None

    def note(self) -> str:
        if self.correct is not None:
            return ""
        return "-" if self.reward is None else f"{self.reward:.3f}"


def default_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at 12 px (Pillow >= 10.1 with FreeType; its 10 px default packs words too tightly
    to read), else its bitmap font."""
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow 10.0: no sizes
        return ImageFont.load_default()


def fit_lines(text: str, width: int, max_lines: int, font=None) -> list[str]:
    """`text` word-wrapped to `width` px in at most `max_lines` lines; what does not fit is cut with
    '...', so a long prompt stays a legible label instead of running over the images."""
    font = font or default_font()
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1] + "..."]
    return [_cut(line, width, font) for line in lines]


def _cut(text: str, width: int, font) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _tile(image: np.ndarray, caption: Caption | None, scale: int) -> Image.Image:
    """The image enlarged (nearest), framed in its verdict's colour with a check or cross in its corner."""
    tile = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    correct = caption.correct if caption else None
    border = max(3, tile.width // 40)
    framed = Image.new("RGB", (tile.width + 2 * border, tile.height + 2 * border), MARK_COLORS[correct])
    framed.paste(tile, (border, border))
    if correct is not None:
        draw, m = ImageDraw.Draw(framed), max(14, tile.width // 8)
        draw.rectangle((0, 0, m, m), fill=MARK_COLORS[correct])
        strokes = [[(3, m // 2), (m * 2 // 5, m - 3), (m - 3, 3)]] if correct else \
            [[(3, 3), (m - 3, m - 3)], [(3, m - 3), (m - 3, 3)]]
        for stroke in strokes:
            draw.line(stroke, fill="white", width=max(2, m // 7))
    return framed


Row = tuple[Caption | None, Sequence[tuple[np.ndarray, Caption | None]]]


def labelled_grid(rows: Sequence[Row], *, headings: Sequence[str], title: str,
                  blocks: Sequence[str] = ()) -> np.ndarray:
    """uint8 [H, W, 3]: a title, `blocks` (labels over equal spans of columns, a rule between them),
    `headings` over the columns, then one row of framed tiles per (caption, tiles), the caption's
    prompt and tag on its left. Images are enlarged as `display_scale` says, the text is not."""
    font = default_font()
    first = rows[0][1][0][0]
    scale = display_scale(first.shape[0])
    cell = _tile(first, None, scale).size
    note = LINE if any(c and c.note() for _, tiles in rows for _, c in tiles) else 0
    width = LABEL_WIDTH + len(headings) * (cell[0] + GAP) + GAP
    title_lines = fit_lines(title, width - 2 * GAP, 2, font)
    top = GAP + LINE * len(title_lines) + (LINE if blocks else 0) + LINE + GAP
    row_h = cell[1] + note + GAP
    canvas = Image.new("RGB", (width, top + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        draw.text((GAP, GAP + k * LINE), line, fill="black", font=font)

    def x_of(column: int) -> int:
        return LABEL_WIDTH + GAP + column * (cell[0] + GAP)

    def centred(text: str, left: int, span: int, y: int) -> None:
        text = _cut(text, span, font)
        draw.text((left + (span - font.getlength(text)) / 2, y), text, fill="black", font=font)

    span = len(headings) // max(1, len(blocks))
    for b, label in enumerate(blocks):
        centred(label, x_of(b * span), span * (cell[0] + GAP) - GAP, top - 2 * LINE - GAP)
        if b:
            draw.line([(x_of(b * span) - GAP // 2, top - 2 * LINE - GAP), (x_of(b * span) - GAP // 2, canvas.height)],
                      fill="black", width=2)
    for c, heading in enumerate(headings):
        centred(heading, x_of(c), cell[0], top - LINE - GAP)
    for r, (caption, tiles) in enumerate(rows):
        y = top + r * row_h
        if caption is not None:
            lines = fit_lines(caption.prompt, LABEL_WIDTH - 2 * GAP, max(1, row_h // LINE - 2), font)
            for k, line in enumerate(lines):
                draw.text((GAP, y + k * LINE), line, fill="black", font=font)
            draw.text((GAP, y + len(lines) * LINE), caption.tag, fill=(110, 110, 110), font=font)
        for c, (image, tile_caption) in enumerate(tiles):
            canvas.paste(_tile(image, tile_caption, scale), (x_of(c), y))
            if tile_caption is not None and tile_caption.note():
                centred(tile_caption.note(), x_of(c), cell[0], y + cell[1])
    return np.asarray(canvas)


def captioned_grid(images: np.ndarray, captions: Sequence[Caption], columns: int, title: str) -> np.ndarray:
    """An evaluation's picture: one row per prompt (its consecutive images; more than `columns` go on
    to the next row), "image j" (the prompt's j-th seed) over column j."""
    rows: list[Row] = []
    for i, caption in enumerate(captions):
        if not rows or rows[-1][0].prompt != caption.prompt or len(rows[-1][1]) == columns:
            rows.append((caption, []))
        rows[-1][1].append((images[i], caption))
    return labelled_grid(rows, headings=[f"image {j}" for j in range(columns)], title=title)


def write_png(array: np.ndarray, path: str | Path) -> Path:
    Image.fromarray(array).save(path)
    return Path(path)


# ----------------------------------------------------------------------------- videos (docs/video.md)

STILL_FRAMES = 4  # frames of a video side by side in a still picture


def stills(images: np.ndarray, frames: int = STILL_FRAMES) -> np.ndarray:
    """What a still picture shows of each sample: images [N, H, W, 3] as they are; videos [N, F, H, W, 3] as a strip
    of `frames` evenly spaced frames (first and last included), [N, H, k W + k - 1, 3] with 1 px grey gutters."""
    if images.ndim == 4:
        return images
    from rewards.video import frame_indices

    index = frame_indices(images.shape[1], frames)
    n, _, h, w, c = images.shape
    strip = np.full((n, h, len(index) * (w + 1) - 1, c), 128, dtype=np.uint8)
    for j, f in enumerate(index):
        strip[:, :, j * (w + 1) : j * (w + 1) + w] = images[:, f]
    return strip


def gif_bytes(frames: Sequence[np.ndarray], fps: float = 8.0) -> bytes:
    """An animated GIF (PIL, looping) of uint8 [H, W, 3] pictures, one per video frame, encoded in memory."""
    first, *rest = [Image.fromarray(f) for f in frames]
    out = io.BytesIO()
    first.save(out, format="GIF", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
    return out.getvalue()


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float = 8.0) -> Path:
    """`gif_bytes` written to `path`."""
    Path(path).write_bytes(gif_bytes(frames, fps))
    return Path(path)


def animated_grid(videos: np.ndarray, captions: Sequence[Caption], columns: int, title: str) -> list[np.ndarray]:
    """The frames of one animated picture of videos [N, F, H, W, 3]: frame t is captioned_grid of every video's frame t
    ("frame t of F" in the title)."""
    return [captioned_grid(videos[:, t], captions, columns, f"{title} -- frame {t + 1} of {videos.shape[1]}")
            for t in range(videos.shape[1])]


def animated_grids(videos: np.ndarray, captions: Sequence[Caption], columns: int, title: str, out_dir: str | Path,
                   stem: str) -> list[Path]:
    """One GIF per prompt (`<stem>_<k>.gif`, k the prompt's order in the picture): its videos side by side, captioned
    as captioned_grid captions them, each GIF frame the videos' frame t ("frame t of F" in the title)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = list(dict.fromkeys(c.prompt for c in captions))
    paths = []
    for k, prompt in enumerate(prompts):
        rows = [i for i, c in enumerate(captions) if c.prompt == prompt]
        frames = animated_grid(videos[rows], [captions[i] for i in rows], columns, title)
        paths.append(write_gif(frames, out_dir / f"{stem}_{k}.gif"))
    return paths


def before_after_grid(before: np.ndarray, after: np.ndarray, out_png: str | Path, *, per_prompt: int,
                      max_prompts: int = 12, before_captions: Sequence[Caption] | None = None,
                      after_captions: Sequence[Caption] | None = None,
                      title: str = "before (base policy) and after (trained policy): the same prompts and seeds") -> Path:
    """One row per prompt: its base-model images under "before (base)", then its trained-policy images
    (same seeds) under "after (trained)"; with captions, the prompt on the left and each image's verdict."""
    n = min(max_prompts, len(before) // per_prompt)
    rows: list[Row] = []
    for i in range(n):
        sl = slice(i * per_prompt, (i + 1) * per_prompt)
        caps_b = list(before_captions[sl]) if before_captions else [None] * per_prompt
        caps_a = list(after_captions[sl]) if after_captions else [None] * per_prompt
        rows.append((caps_b[0], [*zip(before[sl], caps_b, strict=True), *zip(after[sl], caps_a, strict=True)]))
    headings = [f"image {j}" for j in range(per_prompt)] * 2
    grid = labelled_grid(rows, headings=headings, title=title, blocks=("before (base)", "after (trained)"))
    return write_png(grid, out_png)
