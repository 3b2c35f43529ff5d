"""The app's steps 1–4 as plain functions over a loaded models folder, for calibration and evaluation.

The model outputs that do not depend on calibration — classifier score, the three expert maps and
scores, the refinement map (computed for every image, whatever the gate says), the lung mask — are
predicted once per image with the app's own wrappers (:func:`app.model_store.load_models`) and
cached; the gate, the blends and the lung prior are then recomputed for any calibration with the
app's own arithmetic (:mod:`operators.lib.blending`, :mod:`operators.lib.components`), exactly as the
operators chain them (``operators/refinement_operator.py``, ``operators/blend_operator.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.presets import BlendMode, Preset
from operators.lib.blending import blend_weights_from_logloss, gate_is_positive, lung_postprocess, opacity_score, weighted_blend, zones_blend
from operators.lib.components import component_boxes, pad_box, refine_regions, union_mask
from operators.lib.segmenters import predict_expert
from training.data import Record, read_grey, read_mask

logger = logging.getLogger("training.pipeline")


@dataclass
class Predictions:
    """Raw model outputs for N images (maps at the images' own size, all images the same size here)."""

    ids: list[str]
    classes: list[str]
    labels: np.ndarray  # 1 / 0 / -1
    masks: np.ndarray  # bool N×H×W ground truth (empty when unknown)
    classifier: np.ndarray  # N
    expert_scores: np.ndarray  # N×3
    expert_maps: np.ndarray  # float16 N×3×H×W
    refined: np.ndarray  # float16 N×H×W (refinement of the union of expert masks, zero outside crops)
    lungs: np.ndarray  # bool N×H×W
    images: np.ndarray  # uint8 N×H×W (for pictures)
    expert_names: list[str]
    refinement_name: str

    def save(self, path: Path) -> None:
        np.savez(path, **{k: (np.array(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path: Path) -> "Predictions":
        data = np.load(path, allow_pickle=False)
        values = {k: data[k] for k in data.files}
        for key in ("ids", "classes", "expert_names"):
            values[key] = [str(v) for v in values[key]]
        values["refinement_name"] = str(values["refinement_name"])
        return cls(**values)


def models_key(models_dir: Path) -> str:
    """Hash of every model file checksum in the manifest (calibration values do not change it)."""
    manifest = json.loads((Path(models_dir) / "manifest.json").read_text())
    files = {name: entry["files"] for name, entry in manifest["models"].items()}
    return hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]


def predict_records(models_dir: Path, records: list[Record], preset: Preset, cache: Path | None = None, size: int = 256,
                    loaded=None) -> Predictions:
    """Run every model of the pack on ``records`` (images squashed to ``size``², as ``load_arrays``).

    ``loaded``: already-built models (``app.model_store.LoadedModels``) to use instead of loading the
    pack with the preset's settings (the trade-off benchmark passes instrumented ones; no caching then)."""
    from app.model_store import load_models

    key = hashlib.sha1(("|".join(r.id for r in records) + models_key(models_dir) + str(size)).encode()).hexdigest()[:16]
    path = None if cache is None or loaded is not None else Path(cache) / f"predictions_{key}.npz"
    if path is not None and path.is_file():
        return Predictions.load(path)
    if loaded is None:
        loaded = load_models(Path(models_dir), "cpu", preset.nnunet_mirroring, preset.nnunet_tile_step)
    n = len(records)
    out = Predictions(ids=[r.id for r in records], classes=[r.cls for r in records], labels=np.array([r.label for r in records], np.int8),
                      masks=np.zeros((n, size, size), bool), classifier=np.zeros(n, np.float32), expert_scores=np.zeros((n, 3), np.float32),
                      expert_maps=np.zeros((n, 3, size, size), np.float16), refined=np.zeros((n, size, size), np.float16),
                      lungs=np.zeros((n, size, size), bool), images=np.zeros((n, size, size), np.uint8),
                      expert_names=[e.name for e in loaded.experts], refinement_name=loaded.refinement.name)
    from PIL import Image

    started = time.time()
    for i, record in enumerate(records):
        image_u8 = read_grey(record.image)
        mask = read_mask(record.mask, image_u8.shape)
        if image_u8.shape != (size, size):
            image_u8 = np.asarray(Image.fromarray(image_u8).resize((size, size), Image.BILINEAR))
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)) > 127
        image = image_u8.astype(np.float32) / 255.0
        out.images[i], out.masks[i] = image_u8, mask
        out.classifier[i] = loaded.classifier.predict(image)
        full_maps = []
        for k, expert in enumerate(loaded.experts):
            square, full = predict_expert(expert, image)
            out.expert_scores[i, k] = opacity_score(square)
            out.expert_maps[i, k] = full
            full_maps.append(full)
        out.refined[i] = refine(image, full_maps, loaded.refinement, preset)
        out.lungs[i] = loaded.lung.predict_mask(image)
        if (i + 1) % 50 == 0:
            logger.info("predicted %d/%d images (%.1f s/image)", i + 1, n, (time.time() - started) / (i + 1))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        out.save(tmp)
        tmp.replace(path)
    return out


def refine(image: np.ndarray, expert_maps: list[np.ndarray], model, preset: Preset) -> np.ndarray:
    """Step 3 as ``RefinementOperator.refine`` does it (without the gate)."""
    shorter = min(image.shape)
    union = union_mask(expert_maps, preset.mask_threshold)
    boxes = component_boxes(union, preset.max_components, min_area_px=int(preset.min_component_fraction * image.size))
    padded = [pad_box(b, image.shape, preset.crop_pad_fraction, int(preset.min_crop_fraction * shorter)) for b in boxes]
    return refine_regions(image, padded, model.predict_square, model.input_size_px)


def gate_scores(pred: Predictions) -> np.ndarray:
    """The gate's mean of the four scores (classifier + three experts), per image."""
    return np.concatenate([pred.classifier[:, None], pred.expert_scores], axis=1).mean(axis=1)


def final_map(pred: Predictions, i: int, preset: Preset, gate_threshold: float, loglosses: list[float] | None = None,
              zone_values: tuple[float, ...] | None = None) -> tuple[np.ndarray, bool]:
    """Steps 1–4 for image ``i``: (final probability map, gate positive) as ``BlendOperator.blend``."""
    scores = [float(pred.classifier[i])] + [float(s) for s in pred.expert_scores[i]]
    positive, _ = gate_is_positive(scores, gate_threshold)
    shape = pred.masks[i].shape
    if positive:
        maps = [pred.expert_maps[i, k].astype(np.float32) for k in range(3)] + [pred.refined[i].astype(np.float32)]
        if preset.blend is BlendMode.ZONES:
            blended = zones_blend(maps, zone_values or preset.zone_values, preset.mask_threshold)
        else:
            weights = blend_weights_from_logloss(loglosses) if loglosses else np.full(4, 0.25)
            blended = weighted_blend(maps, list(weights))
    else:
        blended = np.zeros(shape, np.float32)
    passes, background = preset.lung_prior.passes(positive, min(shape))
    return lung_postprocess(blended, pred.lungs[i], passes, background), positive


def lung_prior_map(pred: Predictions, i: int, preset: Preset, positive: bool) -> np.ndarray:
    """The lung prior alone (empty blend) with the positive- or negative-study passes."""
    shape = pred.masks[i].shape
    passes, background = preset.lung_prior.passes(positive, min(shape))
    return lung_postprocess(np.zeros(shape, np.float32), pred.lungs[i], passes, background)
