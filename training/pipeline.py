"""The app's steps 1–4 replayed over a loaded models folder, for calibration, evaluation and the bench.

The model outputs that do not depend on calibration — the classifier's raw output, the three expert
maps with their candidate score features, the refinement map (computed for every image, whatever the
gate says), the lung mask — are predicted once per image with the app's own wrappers
(:func:`app.model_store.load_models`) and cached. Scores, the gate and the final maps are then
recomputed for any calibration by the very functions the operators call
(:mod:`operators.lib.steps`), with settings resolved by :func:`operators.lib.calibration.resolve`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from operators.lib.calibration import SCORE_FEATURES, PipelineSettings, ScoreCalibration, feature_index
from operators.lib.segmenters import predict_expert
from operators.lib.settings import Preset
from operators.lib.steps import FinalMaps, GateOutcome, final_map as final_map_step, gate, refine
from training.data import Record, read_grey, read_mask

logger = logging.getLogger("training.pipeline")


@dataclass
class Predictions:
    """Raw model outputs for N images (maps at the images' own size, all images the same size here)."""

    ids: list[str]
    classes: list[str]
    labels: np.ndarray  # 1 / 0 / -1
    masks: np.ndarray  # bool N×H×W ground truth (empty when unknown)
    classifier_raw: np.ndarray  # N, the classifier's own output
    expert_features: np.ndarray  # N×3×F, each expert's candidate score features (SCORE_FEATURES) at its input size
    expert_maps: np.ndarray  # float16 N×3×H×W
    refined: np.ndarray  # float16 N×H×W (refinement of the union of expert masks, zero outside crops)
    lungs: np.ndarray  # bool N×H×W
    images: np.ndarray  # uint8 N×H×W (for pictures)
    expert_names: list[str]
    refinement_name: str
    classifier_name: str

    @property
    def map_names(self) -> list[str]:
        return list(self.expert_names) + [self.refinement_name]

    def save(self, path: Path) -> None:
        np.savez(path, **{k: (np.array(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path: Path) -> "Predictions":
        data = np.load(path, allow_pickle=False)
        values = {k: data[k] for k in data.files}
        for key in ("ids", "classes", "expert_names"):
            values[key] = [str(v) for v in values[key]]
        for key in ("refinement_name", "classifier_name"):
            values[key] = str(values[key])
        return cls(**values)


#: bump when what :func:`predict_records` caches changes, so old caches are not read
CACHE_VERSION = 2


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

    key = hashlib.sha1(("|".join(r.id for r in records) + models_key(models_dir) + f"{size}|v{CACHE_VERSION}|{preset.name}").encode()).hexdigest()[:16]
    path = None if cache is None or loaded is not None else Path(cache) / f"predictions_{key}.npz"
    if path is not None and path.is_file():
        return Predictions.load(path)
    if loaded is None:
        loaded = load_models(Path(models_dir), "cpu", preset.nnunet_mirroring, preset.nnunet_tile_step)
    n = len(records)
    out = Predictions(ids=[r.id for r in records], classes=[r.cls for r in records], labels=np.array([r.label for r in records], np.int8),
                      masks=np.zeros((n, size, size), bool), classifier_raw=np.zeros(n, np.float32),
                      expert_features=np.zeros((n, 3, len(SCORE_FEATURES)), np.float32),
                      expert_maps=np.zeros((n, 3, size, size), np.float16), refined=np.zeros((n, size, size), np.float16),
                      lungs=np.zeros((n, size, size), bool), images=np.zeros((n, size, size), np.uint8),
                      expert_names=[e.name for e in loaded.experts], refinement_name=loaded.refinement.name,
                      classifier_name=loaded.classifier.name)
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
        out.classifier_raw[i] = loaded.classifier.predict(image)
        full_maps = []
        for k, expert in enumerate(loaded.experts):
            square, full = predict_expert(expert, image)
            out.expert_features[i, k] = [feature.feature_of(square) for feature in SCORE_FEATURES]
            out.expert_maps[i, k] = full
            full_maps.append(full)
        out.refined[i] = refine(image, full_maps, loaded.refinement.predict_square, loaded.refinement.input_size_px, preset)[0]
        out.lungs[i] = loaded.lung.predict_mask(image)
        if (i + 1) % 50 == 0:
            logger.info("predicted %d/%d images (%.1f s/image)", i + 1, n, (time.time() - started) / (i + 1))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        out.save(tmp)
        tmp.replace(path)
    return out


def expert_scores_with(pred: Predictions, k: int, score: ScoreCalibration) -> np.ndarray:
    """Expert ``k``'s score on every image under ``score`` (its feature must be one of SCORE_FEATURES)."""
    column = pred.expert_features[:, k, feature_index(score)]
    return np.array([score.probability(float(v)) for v in column])


def scores(pred: Predictions, settings: PipelineSettings) -> np.ndarray:
    """N×4: the classifier's and the three experts' scores as the app computes them under ``settings``."""
    classifier = settings.score(pred.classifier_name, classifier=True)
    columns = [np.array([classifier.probability(float(v)) for v in pred.classifier_raw])]
    columns += [expert_scores_with(pred, k, settings.score(name)) for k, name in enumerate(pred.expert_names)]
    return np.stack(columns, axis=1)


def gate_scores(pred: Predictions, settings: PipelineSettings) -> np.ndarray:
    """The gate's mean of the four scores, per image."""
    return scores(pred, settings).mean(axis=1)


def final_map(pred: Predictions, i: int, settings: PipelineSettings, image_scores: np.ndarray | None = None) -> tuple[FinalMaps, GateOutcome]:
    """Steps 1–4 for image ``i`` as the operators chain them (``image_scores``: row ``i`` of :func:`scores`)."""
    row = scores(pred, settings)[i] if image_scores is None else image_scores
    outcome = gate([float(v) for v in row], settings.gate_threshold)
    maps = {name: pred.expert_maps[i, k].astype(np.float32) for k, name in enumerate(pred.expert_names)}
    if outcome.positive:
        maps[pred.refinement_name] = pred.refined[i].astype(np.float32)
    return final_map_step(outcome.positive, maps, pred.lungs[i], settings), outcome


def lung_prior_map(pred: Predictions, i: int, preset: Preset, positive: bool) -> np.ndarray:
    """The lung prior alone (empty blend) with the positive- or negative-study passes."""
    from operators.lib.blending import lung_postprocess

    shape = pred.masks[i].shape
    passes, background = preset.lung_prior.passes(positive, min(shape))
    return lung_postprocess(np.zeros(shape, np.float32), pred.lungs[i], passes, background)
