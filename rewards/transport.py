"""The wire format of flowray's reward service (rewards/serve.py, rewards/remote.py): JSON only, images
as PNG or safetensors bytes in base64. Never pickle: a request is data a peer wrote, so everything is
parsed by format readers that cannot execute code, and every size and shape is checked before a buffer
is allocated from it.

Request (POST /score):
    {"request_id": str, "prompts": [str, ...], "metadata": [{...}, ...] | null,
     "images": {"format": "png", "data": [base64 PNG, ...]}
             | {"format": "safetensors", "data": base64 of a safetensors file holding "images" uint8 [B, H, W, 3]}}
Response (200):
    {"request_id": str, "scorer": str, "reward": [float | null, ...], "scored": [bool, ...],
     "diagnostics": {name: [float | null, ...]}, "errors": [str, ...], "seconds": float}
JSON has no NaN: an unscored image's reward, and any non-finite value, travels as null.
Errors: {"error": str} with 400 (bad input), 401 (token), 404, 413 (too large), 500 (the scorer raised).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rewards.base import ScoreResult, ScorerInputError

ENCODINGS = ("png", "safetensors")


@dataclass(frozen=True)
class Limits:
    """What a server accepts; a request past any of them is refused with a message naming the limit."""

    max_body_bytes: int = 256 * 2**20
    max_images: int = 256
    max_side: int = 4096


class TransportError(ScorerInputError):
    """A request or response that does not follow the wire format; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- images

def encode_images(images: np.ndarray, encoding: str) -> dict:
    """uint8 [B, H, W, 3] -> the request's "images" object."""
    if encoding == "png":
        from PIL import Image

        data = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=1)  # speed over size
            data.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return {"format": "png", "data": data}
    if encoding == "safetensors":
        from safetensors.numpy import save

        return {"format": "safetensors", "data": base64.b64encode(save({"images": np.ascontiguousarray(images)})).decode("ascii")}
    raise ValueError(f"unknown image encoding {encoding!r}; expected one of {ENCODINGS}")


def _b64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise TransportError(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise TransportError(f"{what} is not valid base64: {err}") from None


def _check_shape(shape: Sequence[int], limits: Limits, what: str) -> None:
    if len(shape) != 4 or shape[-1] != 3 or min(shape) < 1:
        raise TransportError(f"{what} must be uint8 [B, H, W, 3] with B, H, W >= 1, got shape {tuple(shape)}")
    if shape[0] > limits.max_images:
        raise TransportError(f"{what}: {shape[0]} images in one request, more than the server's {limits.max_images}", 413)
    if max(shape[1], shape[2]) > limits.max_side:
        raise TransportError(f"{what}: {shape[1]}x{shape[2]} images, larger than the server's {limits.max_side} px", 413)


def _decode_png(text, index: int, limits: Limits) -> np.ndarray:
    from PIL import Image

    what = f"images.data[{index}]"
    try:
        image = Image.open(io.BytesIO(_b64(text, what)))  # reads the header only
    except OSError as err:
        raise TransportError(f"{what} is not a readable image: {err}") from None
    if image.format != "PNG" or image.mode != "RGB":
        raise TransportError(f"{what} must be an 8-bit RGB PNG, got {image.format} mode {image.mode}")
    _check_shape((1, image.height, image.width, 3), limits, what)  # before decoding a single pixel
    try:
        return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise TransportError(f"{what} does not decode: {err}") from None


def _decode_safetensors(text, limits: Limits) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(_b64(text, "images.data"))
    except (SafetensorError, ValueError, TypeError) as err:
        raise TransportError(f"images.data is not a safetensors file: {err}") from None
    if set(tensors) != {"images"}:
        raise TransportError(f"images.data must hold exactly one tensor 'images', got {sorted(tensors)}")
    images = tensors["images"]
    if images.dtype != np.uint8:
        raise TransportError(f"images.data 'images' must be uint8, got {images.dtype}")
    _check_shape(images.shape, limits, "images.data 'images'")
    return images


def decode_images(obj, limits: Limits) -> np.ndarray:
    """The request's "images" object -> uint8 [B, H, W, 3], every size checked first."""
    if not isinstance(obj, Mapping) or obj.get("format") not in ENCODINGS:
        raise TransportError(f'"images" must be {{"format": one of {list(ENCODINGS)}, "data": ...}}')
    if obj["format"] == "safetensors":
        return _decode_safetensors(obj.get("data"), limits)
    data = obj.get("data")
    if not isinstance(data, list) or not data:
        raise TransportError("images.data must be a non-empty list of base64 PNGs")
    if len(data) > limits.max_images:
        raise TransportError(f"{len(data)} images in one request, more than the server's {limits.max_images}", 413)
    images = [_decode_png(text, i, limits) for i, text in enumerate(data)]
    if len({image.shape for image in images}) != 1:
        raise TransportError(f"images of one request must share a size, got {sorted({i.shape for i in images})}")
    return np.stack(images)


# ----------------------------------------------------------------------------- requests and responses

def parse_request(body: Mapping, limits: Limits) -> tuple[str | None, np.ndarray, list[str], list[dict] | None]:
    """A decoded request body -> (request_id, images, prompts, metadata); TransportError if malformed."""
    if not isinstance(body, Mapping):
        raise TransportError("the request body must be a JSON object")
    request_id = body.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not 0 < len(request_id) <= 128):
        raise TransportError("request_id must be a string of 1 to 128 characters")
    prompts, metadata = body.get("prompts"), body.get("metadata")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise TransportError("prompts must be a list of strings, one per image")
    if metadata is not None and (not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata)):
        raise TransportError("metadata must be null or a list of objects, one per image")
    images = decode_images(body.get("images"), limits)
    if len(prompts) != len(images) or (metadata is not None and len(metadata) != len(images)):
        raise TransportError(f"{len(images)} images, {len(prompts)} prompts and "
                             f"{'no' if metadata is None else len(metadata)} metadata records: one of each per image")
    return request_id, images, prompts, metadata


def _floats(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def result_to_json(result: ScoreResult) -> dict:
    """The response's score fields (reward, scored, diagnostics, errors)."""
    return {"reward": _floats(result.reward), "scored": result.scored.tolist(),
            "diagnostics": {n: _floats(v) for n, v in result.diagnostics.items()}, "errors": list(result.errors)}


def _column(values, size: int, what: str) -> np.ndarray:
    if not isinstance(values, list) or len(values) != size:
        raise ValueError(f"{what} must be a list of {size} numbers or nulls")
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        raise ValueError(f"{what} holds a value that is neither a number nor null")
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def result_from_json(body, size: int) -> ScoreResult:
    """A response body -> the ScoreResult of `size` images; ValueError when it is malformed (the client
    retries, then leaves the images unscored)."""
    if not isinstance(body, Mapping):
        raise ValueError("the response is not a JSON object")
    scored = body.get("scored")
    if not isinstance(scored, list) or len(scored) != size or not all(isinstance(s, bool) for s in scored):
        raise ValueError(f"scored must be a list of {size} booleans")
    diagnostics = body.get("diagnostics", {})
    if not isinstance(diagnostics, Mapping):
        raise ValueError("diagnostics must be an object")
    errors = body.get("errors", [])
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise ValueError("errors must be a list of strings")
    return ScoreResult(_column(body.get("reward"), size, "reward"),
                       {str(n): _column(v, size, f"diagnostics[{n!r}]") for n, v in diagnostics.items()},
                       np.array(scored, dtype=bool), tuple(errors))
