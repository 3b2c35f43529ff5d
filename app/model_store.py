"""Find, verify and load every model of the pipeline, once, from the models folder.

The models folder (``-m`` / ``HOLOSCAN_MODEL_PATH``) holds ``manifest.json`` and one sub-folder per
model in that model's native layout. The manifest gives, for each model: its role, architecture,
on-disk format, input size, version, provenance, options, calibration and the sha256 of every file.
Every checksum is verified before any file is unpickled; a mismatch is a :class:`ModelFolderError`
that stops the app before any input is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from operators.lib.errors import ModelFolderError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class ModelRole(str, Enum):
    """What a model does in the pipeline."""

    CLASSIFIER = "classifier"  # step 1
    EXPERT = "expert"  # step 2 (three of them)
    REFINEMENT = "refinement"  # step 3
    LUNG = "lung"  # step 4 lung mask


class Architecture(str, Enum):
    """Architectures the app can load; each maps to one wrapper in ``operators.lib.segmenters``."""

    XRV_DENSENET121 = "xrv-densenet121"
    XRV_PSPNET = "xrv-pspnet"
    CONVNEXT_FPN = "convnext-fpn"
    NNUNET_2D = "nnunet-2d"
    SMALL_UNET = "small-unet"


#: the on-disk format each architecture is stored in (checked against the manifest)
NATIVE_FORMAT: dict[Architecture, str] = {
    Architecture.XRV_DENSENET121: "torchxrayvision-pickled-model",
    Architecture.XRV_PSPNET: "torchxrayvision-state-dict",
    Architecture.CONVNEXT_FPN: "safetensors+config",
    Architecture.NNUNET_2D: "nnunetv2-trained-model-folder",
    Architecture.SMALL_UNET: "safetensors+config",
}
#: architectures allowed for each role
ROLE_ARCHITECTURES: dict[ModelRole, frozenset[Architecture]] = {
    ModelRole.CLASSIFIER: frozenset({Architecture.XRV_DENSENET121}),
    ModelRole.EXPERT: frozenset({Architecture.CONVNEXT_FPN, Architecture.NNUNET_2D}),
    ModelRole.REFINEMENT: frozenset({Architecture.NNUNET_2D}),
    ModelRole.LUNG: frozenset({Architecture.XRV_PSPNET, Architecture.SMALL_UNET}),
}
#: how many models of each role the pipeline needs
ROLE_COUNTS: dict[ModelRole, int] = {ModelRole.CLASSIFIER: 1, ModelRole.EXPERT: 3, ModelRole.REFINEMENT: 1, ModelRole.LUNG: 1}


@dataclass(frozen=True)
class ModelCard:
    """One entry of ``manifest.json``: what the folder ``models/<name>/`` promises."""

    name: str
    role: ModelRole
    architecture: Architecture
    format: str
    input_size_px: int
    version: str
    provenance: str
    files: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], where: Path) -> "ModelCard":
        """Parse and validate one manifest entry; errors name the manifest and the model."""
        required = ("role", "architecture", "format", "input_size_px", "version", "provenance", "files")
        missing = [key for key in required if key not in data]
        if missing:
            raise ModelFolderError(f"{where}: model {name!r} lacks {missing}.")
        try:
            role = ModelRole(data["role"])
        except ValueError:
            raise ModelFolderError(f"{where}: model {name!r} has role {data['role']!r}; expected one of {[r.value for r in ModelRole]}.") from None
        try:
            architecture = Architecture(data["architecture"])
        except ValueError:
            raise ModelFolderError(
                f"{where}: model {name!r} has architecture {data['architecture']!r}; expected one of {[a.value for a in Architecture]}."
            ) from None
        if architecture not in ROLE_ARCHITECTURES[role]:
            raise ModelFolderError(f"{where}: model {name!r}: a {role.value} cannot be a {architecture.value}.")
        if data["format"] != NATIVE_FORMAT[architecture]:
            raise ModelFolderError(f"{where}: model {name!r}: format {data['format']!r}; a {architecture.value} is stored as {NATIVE_FORMAT[architecture]!r}.")
        files = data["files"]
        if not isinstance(files, dict) or not files:
            raise ModelFolderError(f"{where}: model {name!r} must list its files with their sha256.")
        return cls(
            name=name,
            role=role,
            architecture=architecture,
            format=data["format"],
            input_size_px=int(data["input_size_px"]),
            version=str(data["version"]),
            provenance=str(data["provenance"]),
            files={str(k): str(v).lower() for k, v in files.items()},
            options=dict(data.get("options", {})),
            calibration={str(k): float(v) for k, v in data.get("calibration", {}).items()},
        )


@dataclass(frozen=True)
class Manifest:
    """``models/manifest.json``: the pack's models, in pipeline order, plus pack-level calibration."""

    folder: Path
    pack: dict[str, Any]
    models: tuple[ModelCard, ...]
    calibration: dict[str, Any]

    def by_role(self, role: ModelRole) -> list[ModelCard]:
        return [card for card in self.models if card.role == role]

    @property
    def gate_threshold(self) -> float | None:
        value = self.calibration.get("gate_threshold")
        return None if value is None else float(value)

    @property
    def zone_values(self) -> tuple[float, float, float, float, float] | None:
        """Calibrated Zones values (0–4 agreeing maps), or None when the pack has none."""
        values = self.calibration.get("zone_values")
        if values is None:
            return None
        if len(values) != 5 or not all(0.0 <= float(v) <= 1.0 for v in values):
            raise ModelFolderError(f"{self.folder / MANIFEST_NAME}: calibration.zone_values must be five values in [0, 1]; got {values}.")
        return tuple(float(v) for v in values)  # type: ignore[return-value]


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """Parse ``folder/manifest.json`` and check the pack has every role the pipeline needs."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing; the models folder must contain {MANIFEST_NAME} (see models/README.md).")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc}).") from exc
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ModelFolderError(f"{path}: schema_version is {data.get('schema_version')!r}; this app reads version {SCHEMA_VERSION}.")
    cards = tuple(ModelCard.from_dict(name, entry, path) for name, entry in data.get("models", {}).items())
    manifest = Manifest(folder=folder, pack=dict(data.get("pack", {})), models=cards, calibration=dict(data.get("calibration", {})))
    for role, count in ROLE_COUNTS.items():
        found = [card.name for card in manifest.by_role(role)]
        if len(found) != count:
            raise ModelFolderError(f"{path}: needs {count} model(s) with role {role.value!r}; found {len(found)} {found}.")
    return manifest


def loaded_files(card: ModelCard) -> list[str]:
    """The files (relative to the model folder) that the loader of ``card`` opens.

    Each must be listed in the manifest, or it would be read (for ``.pt``/``.pth``: unpickled)
    without its checksum being verified.
    """
    if card.architecture is Architecture.NNUNET_2D:
        return ["plans.json", "dataset.json", f"fold_{int(card.options.get('fold', 0))}/checkpoint_final.pth"]
    if card.architecture in (Architecture.CONVNEXT_FPN, Architecture.SMALL_UNET):
        return ["config.json", "model.safetensors"]
    if card.architecture is Architecture.XRV_PSPNET:
        return ["pspnet_chestxray_best_model_4.pth"]
    from operators.lib.segmenters import _import_xrv  # the file name is xrv's, per weights name

    weights = card.options.get("weights", "densenet121-res224-all")
    urls = _import_xrv().models.model_urls
    return [Path(urls[weights]["weights_url"]).name] if weights in urls else []


def verify_files(manifest: Manifest) -> None:
    """Check every listed file exists and matches its sha256, before anything is loaded; and that
    every file a loader will open is listed."""
    for card in manifest.models:
        unlisted = [name for name in loaded_files(card) if name not in card.files]
        if unlisted:
            raise ModelFolderError(
                f"{manifest.folder / card.name / unlisted[0]}: model {card.name!r} loads this file but {MANIFEST_NAME} does not "
                "list it with its sha256, so it cannot be verified before loading."
            )
        for relative, expected in card.files.items():
            path = manifest.folder / card.name / relative
            if not path.is_file():
                raise ModelFolderError(f"{path}: missing; model {card.name!r} lists it in {MANIFEST_NAME}. Re-copy the model folder.")
            actual = sha256_of(path)
            if actual != expected:
                raise ModelFolderError(
                    f"{path}: sha256 {actual[:12]}… differs from {MANIFEST_NAME} ({expected[:12]}…); the file is corrupt or "
                    "was replaced. Re-copy the model folder."
                )


@dataclass
class LoadedModels:
    """Every model wrapper, built once; the app hands them to the operators."""

    manifest: Manifest
    classifier: Any
    experts: list[Any]
    refinement: Any
    lung: Any
    load_seconds: dict[str, float]

    def versions(self) -> dict[str, dict[str, str]]:
        """Name → version, architecture and a fingerprint of its files' sha256s, for reports."""
        return {
            card.name: {
                "version": card.version,
                "architecture": card.architecture.value,
                "fingerprint": hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(card.files.items())).encode()).hexdigest()[:16],
            }
            for card in self.manifest.models
        }


def _build(card: ModelCard, folder: Path, device: torch.device, nnunet_mirroring: bool, nnunet_tile_step: float) -> Any:
    from operators.lib import segmenters

    options = card.options
    if card.architecture is Architecture.XRV_DENSENET121:
        return segmenters.XrvOpacityClassifier(card.name, folder, device, weights=options.get("weights", "densenet121-res224-all"),
                                               label=options.get("label", "Lung Opacity"))
    if card.architecture is Architecture.XRV_PSPNET:
        return segmenters.XrvLungSegmenter(card.name, folder, device)
    if card.architecture is Architecture.SMALL_UNET:
        return segmenters.UNetLungSegmenter(card.name, folder, device)
    if card.architecture is Architecture.CONVNEXT_FPN:
        return segmenters.ConvNextFpnSegmenter(card.name, folder, device)
    if card.architecture is Architecture.NNUNET_2D:
        return segmenters.NnUNetSegmenter(card.name, folder, device, input_size_px=card.input_size_px, label=options.get("label", "opacity"),
                                          use_mirroring=nnunet_mirroring, tile_step=nnunet_tile_step, fold=int(options.get("fold", 0)))
    raise ModelFolderError(f"No loader for architecture {card.architecture.value!r}.")  # unreachable: Architecture is closed


def load_models(folder: Path, device: str = "cpu", nnunet_mirroring: bool = False, nnunet_tile_step: float = 0.5) -> LoadedModels:
    """Read the manifest, verify every checksum, then build each model wrapper once."""
    manifest = read_manifest(folder)
    started = time.perf_counter()
    verify_files(manifest)
    logger.info("Verified %d model folders in %.2fs", len(manifest.models), time.perf_counter() - started)
    torch_device = torch.device(device)
    built: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for card in manifest.models:
        started = time.perf_counter()
        try:
            built[card.name] = _build(card, manifest.folder / card.name, torch_device, nnunet_mirroring, nnunet_tile_step)
        except ModelFolderError:
            raise
        except Exception as exc:
            raise ModelFolderError(f"{manifest.folder / card.name}: model {card.name!r} failed to load ({type(exc).__name__}: {exc}).") from exc
        seconds[card.name] = time.perf_counter() - started
        logger.info("Loaded %s (%s) in %.2fs", card.name, card.architecture.value, seconds[card.name])
    return LoadedModels(
        manifest=manifest,
        classifier=built[manifest.by_role(ModelRole.CLASSIFIER)[0].name],
        experts=[built[card.name] for card in manifest.by_role(ModelRole.EXPERT)],
        refinement=built[manifest.by_role(ModelRole.REFINEMENT)[0].name],
        lung=built[manifest.by_role(ModelRole.LUNG)[0].name],
        load_seconds=seconds,
    )
