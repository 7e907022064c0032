"""`geneval`: GenEval with Mask2Former (objects) and CLIP zero-shot (colours), judged by the shared rules.

Reproduces GenEval's `evaluation/evaluate_images.py` (djghosh13/geneval) on transformers instead of
mmdetection/open_clip:
- objects: Mask2Former COCO instance segmentation. GenEval uses mmdet's Swin-S checkpoint; the closest
  transformers checkpoint is facebook/mask2former-swin-small-coco-instance. Instances are decoded the
  way mmdet's Mask2Former does (top-100 (query, class) pairs, score = class prob * mean mask prob inside
  the mask, box = the mask's extent), not with transformers' post-processing, which resamples masks
  through a fixed 384x384 grid and ignores the padding of non-square inputs.
- colours: CLIP ViT-L/14 (openai weights) zero-shot over GenEval's ten colours, one classifier per
  object class from GenEval's three templates; each crop is the object's mask pasted on a #999 grey
  canvas, cropped to its box.
- thresholds (0.3, 0.9 for counting, 16 per class, position margin 0.1) and every verdict live in
  rewards/geneval_rules.py, shared with the shapes world.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from rewards.base import ScoreResult, register_scorer, validate_batch
from rewards.geneval_rules import MAX_OBJECTS, THRESHOLD, Detection, score_detections
from rewards.pickscore import embedding, resolve_device
from rewards.shapes_scorer import check_geneval_metadata, verdicts_result

DETECTOR_MODEL = "facebook/mask2former-swin-small-coco-instance"
CLIP_MODEL = "openai/clip-vit-large-patch14"
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
BACKGROUND = (153, 153, 153)  # GenEval's bgcolor "#999"
MAX_PER_IMAGE = 100  # mmdet Mask2Former test_cfg.max_per_image
# COCO names in transformers' id2label -> GenEval's object_names.txt, where they differ.
COCO_TO_GENEVAL = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


def decode_instances(class_logits, mask_logits, labels: Sequence[str], max_per_image: int = MAX_PER_IMAGE,
                     min_score: float = 0.0) -> list[Detection]:
    """mmdet's Mask2Former instance post-processing for one image.

    class_logits [Q, C + 1] (last = no object); mask_logits [Q, h, w] already resized to the image
    (H, W). Returns detections sorted by score, those at or below `min_score` or with an empty mask dropped.
    The kept detections' scores, labels and masks reach the host together, not one detection at a time
    (each read of a GPU tensor waits for the device).
    """
    import torch

    num_classes = class_logits.shape[-1] - 1
    scores = class_logits.softmax(-1)[:, :-1].flatten()
    k = min(max_per_image, scores.numel())
    top_scores, top_index = scores.topk(k)
    query, label = top_index // num_classes, top_index % num_classes
    mask_prob = mask_logits[query].sigmoid()
    masks = mask_prob > 0.5
    mask_score = (mask_prob * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    det_scores = top_scores * mask_score
    order = torch.argsort(det_scores, descending=True)
    kept = order[(det_scores[order] > min_score) & masks[order].flatten(1).any(1)]
    scores, label_ids = torch.stack([det_scores[kept].double(), label[kept].double()]).cpu().tolist()
    detections = []
    for score, label_id, mask in zip(scores, label_ids, masks[kept].cpu().numpy(), strict=True):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
        name = labels[int(label_id)]
        detections.append(Detection(COCO_TO_GENEVAL.get(name, name), box, score, None, mask))
    return detections


def color_crop(image: np.ndarray, detection: Detection) -> np.ndarray:
    """GenEval's colour crop: the object's mask over a #999 canvas, cropped to its box."""
    canvas = np.empty_like(image)
    canvas[...] = BACKGROUND
    pasted = np.where(detection.mask[..., None], image, canvas) if detection.mask is not None else image
    x1, y1, x2, y2 = (int(round(v)) for v in detection.box)
    return np.ascontiguousarray(pasted[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)])


def colors_to_classify(detections: Sequence[Detection], record: Mapping) -> list[int]:
    """Indices of the detections whose colour a rule may read: those of classes with a colour clause."""
    classes = {req["class"] for req in record["include"] if "color" in req}
    return [i for i, d in enumerate(detections) if d.label in classes]


@register_scorer("geneval")
class GenevalScorer:
    """reward = Flow-GRPO's partial GenEval reward (default) or the strict verdict; diagnostics:
    strict, partial, correct (GenEval's official verdict, what the headline accuracy averages)."""

    name = "geneval"

    def __init__(self, detector: str = DETECTOR_MODEL, clip: str = CLIP_MODEL, clip_processor: str | None = None,
                 reward: Literal["partial", "strict"] = "partial", device: str = "auto", dtype: str = "float32",
                 num_threads: int = 1):
        """detector: Mask2FormerForUniversalSegmentation folder or hub id (with its image processor);
        clip: CLIPModel folder or hub id for colours; clip_processor: its processor (None: same folder)."""
        import torch
        from transformers import (
            AutoImageProcessor,
            AutoModel,
            AutoProcessor,
            Mask2FormerForUniversalSegmentation,
        )

        if reward not in ("partial", "strict"):
            raise ValueError(f"geneval: reward must be 'partial' or 'strict', got {reward!r}")
        torch.set_num_threads(max(1, int(num_threads)))
        self.reward = reward
        self.device = resolve_device(device)
        self.dtype = getattr(torch, dtype)
        self.detector_processor = AutoImageProcessor.from_pretrained(detector)
        self.detector = Mask2FormerForUniversalSegmentation.from_pretrained(detector, dtype=self.dtype).eval().to(self.device)
        config_labels = self.detector.config.id2label
        self.labels = [config_labels[i] for i in range(len(config_labels))]
        self.clip_processor = AutoProcessor.from_pretrained(clip_processor or clip)
        self.clip = AutoModel.from_pretrained(clip, dtype=self.dtype).eval().to(self.device)
        self._color_classifiers: dict[str, object] = {}

    def detect(self, images: np.ndarray) -> list[list[Detection]]:
        """Mask2Former detections above GenEval's lowest threshold (0.3), uncoloured, per image."""
        import torch
        import torch.nn.functional as F

        inputs = self.detector_processor(images=list(images), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.no_grad():
            out = self.detector(pixel_values=pixel_values, pixel_mask=inputs["pixel_mask"].to(self.device))
        padded_hw = pixel_values.shape[-2:]
        results = []
        for i, image in enumerate(images):
            valid = inputs["pixel_mask"][i]
            valid_h, valid_w = int(valid.any(1).sum()), int(valid.any(0).sum())
            masks = F.interpolate(out.masks_queries_logits[i:i + 1].float(), size=padded_hw, mode="bilinear",
                                  align_corners=False)[:, :, :valid_h, :valid_w]
            masks = F.interpolate(masks, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
            results.append(decode_instances(out.class_queries_logits[i].float(), masks, self.labels, min_score=THRESHOLD))
        return results

    def _color_classifier(self, classname: str):
        """[D, 10] unit text embeddings, template-averaged (clip_benchmark's zero_shot_classifier)."""
        import torch

        if classname not in self._color_classifiers:
            texts = [t.format(c=c, obj=classname) for c in COLORS for t in COLOR_TEMPLATES]
            tokens = self.clip_processor(text=texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
            with torch.no_grad():
                emb = embedding(self.clip.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
                )).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            emb = emb.reshape(len(COLORS), len(COLOR_TEMPLATES), -1).mean(1)
            self._color_classifiers[classname] = (emb / emb.norm(dim=-1, keepdim=True)).T
        return self._color_classifiers[classname]

    def classify_colors(self, image: np.ndarray, detections: Sequence[Detection]) -> list[str]:
        """GenEval colour name of each detection (CLIP zero-shot on its grey-backed crop)."""
        import torch

        if not detections:
            return []
        crops = [color_crop(image, d) for d in detections]
        pixels = self.clip_processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        with torch.no_grad():
            emb = embedding(self.clip.get_image_features(pixel_values=pixels)).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        classifiers = [self._color_classifier(d.label) for d in detections]
        best = torch.stack([(e @ c).argmax() for e, c in zip(emb, classifiers, strict=True)])
        return [COLORS[i] for i in best.tolist()]  # one read for every detection

    def judge(self, image: np.ndarray, detections: Sequence[Detection], record: Mapping):
        """Colour the detections a colour clause may read, then apply GenEval's rules."""
        detections = sorted(detections, key=lambda d: -d.score)
        per_class: dict[str, int] = {}
        kept = []
        for d in detections:  # only GenEval's top-16 per class can be read by a rule
            per_class[d.label] = per_class.get(d.label, 0) + 1
            if per_class[d.label] <= MAX_OBJECTS:
                kept.append(d)
        index = colors_to_classify(kept, record)
        colors = self.classify_colors(image, [kept[i] for i in index])
        for i, color in zip(index, colors, strict=True):
            kept[i] = dataclasses.replace(kept[i], color=color)
        return score_detections(kept, record)

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        metadata = validate_batch(images, prompts, metadata)
        check_geneval_metadata(self.name, prompts, metadata)
        detections = self.detect(images)
        scores = [self.judge(image, dets, record) for image, dets, record in zip(images, detections, metadata, strict=True)]
        return verdicts_result(scores, self.reward)
