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
from typing import TYPE_CHECKING, Any

import torch

from app.model_formats import FORMATS, Architecture, LoadContext
from operators.lib.calibration import Calibration
from operators.lib.errors import ModelFolderError
from operators.lib.onnx_graphs import ONNXRUNTIME, TORCH, GraphEntry, OnnxNetwork, open_session

if TYPE_CHECKING:  # the wrappers' module imports every network library; loading imports it when needed
    from operators.lib.segmenters import LungSegmenter, OpacityClassifier, SegmentationExpert

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class ModelRole(str, Enum):
    """What a model does in the pipeline."""

    CLASSIFIER = "classifier"  # step 1
    EXPERT = "expert"  # step 2 (three of them)
    REFINEMENT = "refinement"  # step 3
    LUNG = "lung"  # step 4 lung mask


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
    calibration: dict[str, Any] = field(default_factory=dict)  # raw; parsed into the pack's Calibration
    graph: GraphEntry | None = None  # graphs.onnx: an ONNX export of the network (operators/lib/onnx_graphs.py)

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
        native = FORMATS[architecture].name
        if data["format"] != native:
            raise ModelFolderError(f"{where}: model {name!r}: format {data['format']!r}; a {architecture.value} is stored as {native!r}.")
        files = data["files"]
        if not isinstance(files, dict) or not files:
            raise ModelFolderError(f"{where}: model {name!r} must list its files with their sha256.")
        for relative in files:
            if not _inside_folder(str(relative)):
                raise ModelFolderError(f"{where}: model {name!r} lists {relative!r}; file paths must stay inside the model's folder "
                                       "(relative, no '..').")
        calibration = data.get("calibration", {})
        if not isinstance(calibration, dict):
            raise ModelFolderError(f"{where}: model {name!r}: calibration must be an object.")
        graph = None
        if (data.get("graphs") or {}).get("onnx") is not None:
            try:
                graph = GraphEntry.from_dict(data["graphs"]["onnx"], f"{where}: model {name!r}")
            except ValueError as exc:
                raise ModelFolderError(str(exc)) from None
            if not _inside_folder(graph.file):
                raise ModelFolderError(f"{where}: model {name!r}: graphs.onnx.file {graph.file!r} must stay inside the model's folder.")
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
            calibration=dict(calibration),
            graph=graph,
        )


@dataclass(frozen=True)
class Manifest:
    """``models/manifest.json``: the pack's models, in pipeline order, plus the pack's calibration."""

    folder: Path
    pack: dict[str, Any]
    models: tuple[ModelCard, ...]
    calibration: Calibration

    def by_role(self, role: ModelRole) -> list[ModelCard]:
        return [card for card in self.models if card.role == role]


def _inside_folder(relative: str) -> bool:
    """A manifest path names a file inside its model folder: relative, no ``..``, no drive or root."""
    path = Path(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts and not relative.startswith(("/", "\\"))


def resolves_inside(path: Path, folder: Path) -> bool:
    """True when ``path``, links followed, is ``folder`` or lies under it (a manifest cannot point outside)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


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
    entries = data.get("models", {})
    if not isinstance(entries, dict):
        raise ModelFolderError(f"{path}: models must be an object of name → entry.")
    for name in entries:
        if not _inside_folder(str(name)) or "/" in str(name) or "\\" in str(name) or str(name) in (".", ""):
            raise ModelFolderError(f"{path}: model name {name!r} must be a plain folder name inside the models folder.")
    cards = tuple(ModelCard.from_dict(name, entry, path) for name, entry in entries.items())
    calibration = Calibration.from_manifest(dict(data.get("calibration", {})), {card.name: card.calibration for card in cards}, str(path))
    manifest = Manifest(folder=folder, pack=dict(data.get("pack", {})), models=cards, calibration=calibration)
    for role, count in ROLE_COUNTS.items():
        found = [card.name for card in manifest.by_role(role)]
        if len(found) != count:
            raise ModelFolderError(f"{path}: needs {count} model(s) with role {role.value!r}; found {len(found)} {found}.")
    return manifest


def loaded_files(card: ModelCard) -> list[str]:
    """The files (relative to the model folder) that the loader of ``card`` opens (its format's entry).

    Each must be listed in the manifest, or it would be read without its checksum being verified.
    """
    return FORMATS[card.architecture].files(card.options)


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
        root = (manifest.folder / card.name).resolve()
        for relative, expected in card.files.items():
            path = manifest.folder / card.name / relative
            if not resolves_inside(path, root):
                raise ModelFolderError(f"{path}: resolves outside the model folder {root} (a link?); refusing to load it.")
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
    classifier: OpacityClassifier
    experts: list[SegmentationExpert]
    refinement: SegmentationExpert
    lung: LungSegmenter
    load_seconds: dict[str, float]
    runtimes: dict[str, str] = field(default_factory=dict)  # name → "torch" or "onnxruntime"

    @property
    def map_names(self) -> list[str]:
        """The blend's four maps: the experts in gate order, then the refinement model."""
        return [m.name for m in self.experts] + [self.refinement.name]

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


def use_verified_graph(card: ModelCard, wrapper: Any, folder: Path, threads: int) -> str:
    """Swap ``wrapper``'s network for its ONNX graph when the manifest lists one whose sha256 matches.

    Returns the runtime the model will use. A missing, altered or unloadable graph is logged and the
    torch network (the source of truth) stays: the graph is an accelerator, never a requirement.
    """
    if card.graph is None or not hasattr(wrapper, "use_graph"):
        return TORCH
    path = folder / card.graph.file
    if not resolves_inside(path, folder) or not path.is_file():
        logger.warning("%s: the ONNX graph listed in %s is missing (or outside the folder); %s runs on torch.", path, MANIFEST_NAME, card.name)
        return TORCH
    if sha256_of(path) != card.graph.sha256:
        logger.warning("%s: sha256 differs from %s; %s runs on torch (its native weights were verified).", path, MANIFEST_NAME, card.name)
        return TORCH
    try:
        session = open_session(path, threads)
    except Exception as exc:  # onnxruntime missing or the graph unreadable: the native network still works
        logger.warning("%s: ONNX Runtime cannot open it (%s: %s); %s runs on torch.", path, type(exc).__name__, exc, card.name)
        return TORCH
    shape = tuple(session.get_inputs()[0].shape[1:])
    expected = tuple(wrapper.graph_target()[1][1:])
    if shape != expected:
        logger.warning("%s: input shape %s differs from the network's %s; %s runs on torch.", path, shape, expected, card.name)
        return TORCH
    wrapper.use_graph(OnnxNetwork(session, path))
    return ONNXRUNTIME


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``); False where that is not possible.

    A network that runs on ONNX Runtime is first loaded into torch (the native weights are the source
    of truth), then swapped for its graph. glibc keeps the freed weights' pages in the process: with
    the production graphs that is 1.0 GB of RSS after loading (2.72 GB → 1.69 GB once trimmed,
    ``docs/benchmark.md`` §0). Trimming after each model keeps the loading peak down too.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0)) if name else False
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return False


def load_models(folder: Path, device: str = "cpu", nnunet_mirroring: bool = False, nnunet_tile_step: float = 0.5,
                runtime: str = "auto") -> LoadedModels:
    """Read the manifest, verify every checksum, then build each model wrapper once.

    ``runtime``: ``"auto"`` runs each network whose manifest lists a verified ONNX graph with ONNX
    Runtime (CPU only), ``"torch"`` runs every network with torch.
    """
    if runtime not in ("auto", TORCH):
        raise ValueError(f"runtime must be 'auto' or 'torch', not {runtime!r}")
    manifest = read_manifest(folder)
    started = time.perf_counter()
    verify_files(manifest)
    logger.info("Verified %d model folders in %.2fs", len(manifest.models), time.perf_counter() - started)
    context = LoadContext(torch.device(device), nnunet_mirroring, nnunet_tile_step)
    use_graphs = runtime == "auto" and context.device.type == "cpu"
    built: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    runtimes: dict[str, str] = {}
    for card in manifest.models:
        started = time.perf_counter()
        try:
            built[card.name] = FORMATS[card.architecture].load(card.name, manifest.folder / card.name, card.input_size_px, card.options, context)
        except ModelFolderError:
            raise
        except Exception as exc:
            raise ModelFolderError(f"{manifest.folder / card.name}: model {card.name!r} failed to load ({type(exc).__name__}: {exc}).") from exc
        runtimes[card.name] = (use_verified_graph(card, built[card.name], manifest.folder / card.name, torch.get_num_threads())
                               if use_graphs else TORCH)
        if runtimes[card.name] == ONNXRUNTIME:
            release_freed_memory()  # the torch weights the graph replaced
        seconds[card.name] = time.perf_counter() - started
        logger.info("Loaded %s (%s, %s) in %.2fs", card.name, card.architecture.value, runtimes[card.name], seconds[card.name])
    return LoadedModels(
        manifest=manifest,
        classifier=built[manifest.by_role(ModelRole.CLASSIFIER)[0].name],
        experts=[built[card.name] for card in manifest.by_role(ModelRole.EXPERT)],
        refinement=built[manifest.by_role(ModelRole.REFINEMENT)[0].name],
        lung=built[manifest.by_role(ModelRole.LUNG)[0].name],
        load_seconds=seconds,
        runtimes=runtimes,
    )
