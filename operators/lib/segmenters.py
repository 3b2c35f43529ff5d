"""Model wrappers: each is built once from its model folder and called once per image.

Every wrapper states its axis order and value range. Images are H×W float32 in [0, 1]
(MONOCHROME2 sense, see :mod:`operators.lib.dicom_input`). A segmentation expert predicts on the
whole image squashed to its S×S input (no crop) and returns an S×S opacity probability map; the
torchxrayvision models keep their own convention (centre square crop).
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from operators.lib.errors import ModelFolderError
from operators.lib.preprocessing import equalize_histogram, paste_center_square, resize, xrv_input
from operators.nets.convnext_fpn import ConvNextFpn, ConvNextFpnConfig
from operators.nets.unet import SmallUNet, UNetConfig

logger = logging.getLogger(__name__)

#: torchxrayvision's file name for its ChestX-Det PSPNet state dict (its loader opens exactly this)
XRV_PSPNET_FILE = "pspnet_chestxray_best_model_4.pth"


class SegmentationExpert(Protocol):
    """What the expert and refinement operators need from a segmentation model."""

    name: str
    input_size_px: int

    def predict_square(self, square_image: np.ndarray) -> np.ndarray:
        """S×S image in [0, 1] → S×S float32 opacity probability."""


class OpacityClassifier(Protocol):
    """What the classifier operator needs: H×W image in [0, 1] → the model's opacity output."""

    name: str

    def predict(self, image: np.ndarray) -> float: ...


class LungSegmenter(Protocol):
    """What the lung operator needs: H×W image in [0, 1] → H×W bool lung mask."""

    name: str

    def predict_mask(self, image: np.ndarray) -> np.ndarray: ...


def predict_expert(expert: SegmentationExpert, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``expert`` on a full-resolution H×W image.

    Returns (S×S probability map at the model's input size, H×W map resized back to the image).
    """
    size = expert.input_size_px
    square_prob = expert.predict_square(resize(image, (size, size)))
    full_prob = np.clip(resize(square_prob, image.shape), 0.0, 1.0)
    return square_prob, full_prob


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelFolderError(f"{path}: missing; the model folder is incomplete.") from exc
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc}).") from exc


def load_safetensors_into(module: torch.nn.Module, path: Path) -> None:
    """Load ``model.safetensors`` (fp16 or fp32 on disk) into ``module`` as fp32, strictly."""
    state = {key: value.float() if value.is_floating_point() else value for key, value in load_file(str(path)).items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFolderError(f"{path}: weights do not match the architecture in config.json ({exc}).") from exc


class ConvNextFpnSegmenter:
    """ConvNeXt-FPN expert from ``config.json`` + ``model.safetensors``.

    Preprocessing (shared with training, :meth:`prepare`): resize to S×S, histogram equalisation
    when the config says so, repeat to 3 channels, normalise with the config's mean/std.
    """

    def __init__(self, name: str, folder: Path, device: torch.device):
        self.name = name
        self.config = ConvNextFpnConfig.from_dict(_read_json(folder / "config.json"))
        self.input_size_px = self.config.input_size_px
        self.device = device
        self.network = ConvNextFpn(self.config)
        load_safetensors_into(self.network, folder / "model.safetensors")
        self.network.eval().to(device)

    @staticmethod
    def prepare(square_image: np.ndarray, config: ConvNextFpnConfig) -> torch.Tensor:
        """S×S [0, 1] image → 1×3×S×S normalised tensor (the one definition of this input)."""
        image = equalize_histogram(square_image) if config.histogram_equalized else square_image
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].repeat(1, 3, 1, 1)
        mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (tensor - mean) / std

    @torch.inference_mode()
    def predict_square(self, square_image: np.ndarray) -> np.ndarray:
        logits = self.network(self.prepare(square_image, self.config).to(self.device))
        return torch.sigmoid(logits)[0, 0].float().cpu().numpy()

    def graph_target(self) -> tuple[torch.nn.Module, tuple[int, ...]]:
        """The network an ONNX graph replaces, and the input shape it sees (:mod:`operators.lib.onnx_graphs`)."""
        return self.network, (1, 3, self.input_size_px, self.input_size_px)

    def use_graph(self, network: torch.nn.Module) -> None:
        self.network = network


#: Gaussians kept by :func:`_widen_gaussian_cache` (one per patch size and device; the app has three)
GAUSSIAN_CACHE_SIZE = 8


def _widen_gaussian_cache() -> None:
    """Give nnU-Net's ``compute_gaussian`` a cache that holds every patch size the app predicts at.

    nnunetv2 caches the sliding window's Gaussian importance map with ``lru_cache(maxsize=2)``. The app
    runs three nnU-Nets with three patch sizes in turn (two experts and the refinement), so every call
    missed and recomputed it with scipy — single-threaded, 0.1–0.4 s for a 768-px patch, on every
    study (``docs/benchmark.md`` §0.1). The same function, with a larger cache, in the module that calls it: the values are the
    stock ones. Idempotent.
    """
    from nnunetv2.inference import predict_from_raw_data, sliding_window_prediction

    if predict_from_raw_data.compute_gaussian.cache_parameters()["maxsize"] >= GAUSSIAN_CACHE_SIZE:
        return  # already widened
    stock = sliding_window_prediction.compute_gaussian.__wrapped__
    predict_from_raw_data.compute_gaussian = functools.lru_cache(maxsize=GAUSSIAN_CACHE_SIZE)(stock)


@functools.cache
def _single_fold_predictor_class():
    """``nnUNetPredictor`` for one fold whose weights are loaded once (nnunetv2 imported lazily).

    The stock ``predict_logits_from_preprocessed_data`` reloads every fold's state dict before each
    prediction (for fold ensembles; about 0.1 s per call for a production 2D plan on CPU) and caps
    torch's threads at ``nnUNet_def_n_proc`` while it predicts. With one fold the network already
    holds its weights, and the thread count is the app's (``--threads``): this predicts with the same
    sliding window, Gaussian weighting and mirroring, so the logits are the stock ones.

    It also widens nnU-Net's cache of sliding-window Gaussians (:func:`_widen_gaussian_cache`).
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    _widen_gaussian_cache()

    class SingleFoldPredictor(nnUNetPredictor):
        @torch.inference_mode()
        def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
            if len(self.list_of_parameters) != 1:
                return super().predict_logits_from_preprocessed_data(data)
            return self.predict_sliding_window_return_logits(data).to("cpu")

    return SingleFoldPredictor


class NnUNetSegmenter:
    """A 2D nnU-Net v2 model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth), run by
    nnunetv2's own ``nnUNetPredictor`` in this process (no worker processes), its one fold's weights
    loaded once (:func:`_single_fold_predictor_class`).

    Input to nnU-Net: (C=1, Z=1, H, W) with spacing (999, 1, 1), values 0–255 as when nnU-Net reads
    an 8-bit PNG (its z-score normalisation is per image). Output: the softmax probability of the
    label named ``label`` in dataset.json.
    """

    def __init__(self, name: str, folder: Path, device: torch.device, input_size_px: int, label: str = "opacity",
                 use_mirroring: bool = False, tile_step: float = 0.5, fold: int = 0):
        self.name = name
        self.input_size_px = input_size_px
        dataset = _read_json(folder / "dataset.json")
        labels = dataset.get("labels", {})
        if label not in labels:
            raise ModelFolderError(f"{folder / 'dataset.json'}: has no label {label!r}; labels are {sorted(labels)}.")
        self.label_index = int(labels[label])
        checkpoint = folder / f"fold_{fold}" / "checkpoint_final.pth"
        if not checkpoint.is_file():
            raise ModelFolderError(f"{checkpoint}: missing; the nnU-Net model folder is incomplete.")
        self.predictor = _single_fold_predictor_class()(
            tile_step_size=tile_step,
            use_gaussian=True,
            use_mirroring=use_mirroring,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        self.predictor.initialize_from_trained_model_folder(str(folder), use_folds=(fold,), checkpoint_name="checkpoint_final.pth")
        self.predictor.network.load_state_dict(self.predictor.list_of_parameters[0])  # once (SingleFoldPredictor)

    def predict_square(self, square_image: np.ndarray) -> np.ndarray:
        data = (np.asarray(square_image, dtype=np.float32) * 255.0)[None, None]
        _, probabilities = self.predictor.predict_single_npy_array(data, {"spacing": [999.0, 1.0, 1.0]}, None, None, True)
        return np.asarray(probabilities[self.label_index, 0], dtype=np.float32)

    def graph_target(self) -> tuple[torch.nn.Module, tuple[int, ...]]:
        """The network an ONNX graph replaces (nnU-Net's, called once per sliding-window tile) and its tile shape."""
        channels = len(self.predictor.dataset_json.get("channel_names", {"0": "cxr"}))
        return self.predictor.network, (1, channels, *self.predictor.configuration_manager.patch_size)

    def use_graph(self, network: torch.nn.Module) -> None:
        self.predictor.network = network
        self.predictor.list_of_parameters = [{}]  # the fold's state dict is in the graph now: do not hold it twice


def import_xrv():
    """Import torchxrayvision without letting it silence every warning of the process."""
    saved = warnings.filters[:]
    import torchxrayvision as xrv

    warnings.filters[:] = saved
    return xrv


def new_xrv_densenet(config: dict) -> torch.nn.Module:
    """An xrv DenseNet-121 shaped by ``config`` (``targets``, ``op_threshs``), weights not loaded."""
    threshs = config.get("op_threshs")
    network = import_xrv().models.DenseNet(num_classes=len(config["targets"]),
                                           op_threshs=None if threshs is None else torch.tensor(threshs, dtype=torch.float32))
    network.targets = list(config["targets"])
    return network


class XrvOpacityClassifier:
    """Step 1: torchxrayvision DenseNet-121 (``densenet121-res224-all`` family), "Lung Opacity" output.

    Stored as ``config.json`` (xrv's targets, ``op_threshs`` and input size) + ``model.safetensors``
    (the state dict, op_threshs included): nothing is unpickled and nothing is downloaded. xrv's
    public pickled weights become this format with ``python -m tools.convert_xrv_densenet``. With
    ``op_threshs`` the output is sigmoid then xrv's ``op_norm``, which maps the model's operating
    threshold to 0.5: "probability-like, 0.5 = the operating point".
    """

    def __init__(self, name: str, folder: Path, device: torch.device, label: str = "Lung Opacity"):
        self.name = name
        config = _read_json(folder / "config.json")
        if not isinstance(config.get("targets"), list):
            raise ModelFolderError(f"{folder / 'config.json'}: has no list of targets.")
        if label not in config["targets"]:
            raise ModelFolderError(f"{folder / 'config.json'}: classifier has no {label!r} output; targets are {config['targets']}.")
        self.network = new_xrv_densenet(config)
        load_safetensors_into(self.network, folder / "model.safetensors")
        self.label_index = config["targets"].index(label)
        self.input_size_px = int(config.get("input_size_px", 224))
        self.network.eval().to(device)
        self.device = device

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> float:
        """H×W [0, 1] image → op-normalised "Lung Opacity" output in [0, 1]."""
        x = torch.from_numpy(xrv_input(image, self.input_size_px)).to(self.device)
        return float(self.network(x)[0, self.label_index].clamp(0, 1))

    def graph_target(self) -> tuple[torch.nn.Module, tuple[int, ...]]:
        """The network an ONNX graph replaces (op_norm included) and its input shape."""
        return self.network, (1, 1, self.input_size_px, self.input_size_px)

    def use_graph(self, network: torch.nn.Module) -> None:
        self.network = network


class XrvLungSegmenter:
    """Lung mask from torchxrayvision's ChestX-Det PSPNet (channels "Left Lung" and "Right Lung").

    Centre square crop → 512 px → sigmoid ≥ 0.5 on either lung channel → pasted back at full size.
    """

    def __init__(self, name: str, folder: Path, device: torch.device):
        xrv = import_xrv()
        from torchxrayvision.baseline_models.chestx_det import PSPNet

        self.name = name
        weights = folder / XRV_PSPNET_FILE
        if not weights.is_file():
            raise ModelFolderError(f"{weights}: missing; torchxrayvision weights must be staged in the model folder.")
        self.network = PSPNet(cache_dir=str(folder))
        self.channels = [self.network.targets.index("Left Lung"), self.network.targets.index("Right Lung")]
        self.network.eval().to(device)
        self.device = device
        self.input_size_px = 512
        del xrv

    @torch.inference_mode()
    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(xrv_input(image, self.input_size_px)).to(self.device)
        probs = torch.sigmoid(self.network(x))[0, self.channels].amax(dim=0).float().cpu().numpy()
        return paste_center_square(probs, image.shape) >= 0.5


class UNetLungSegmenter:
    """The project's light lung model (:class:`SmallUNet`): ``config.json`` + ``model.safetensors``.

    Whole image squashed to S×S, values [0, 1]; sigmoid ≥ 0.5 on any output channel is lung.
    """

    def __init__(self, name: str, folder: Path, device: torch.device):
        self.name = name
        self.config = UNetConfig.from_dict(_read_json(folder / "config.json"))
        self.input_size_px = self.config.input_size_px
        self.network = SmallUNet(self.config)
        load_safetensors_into(self.network, folder / "model.safetensors")
        self.network.eval().to(device)
        self.device = device

    @torch.inference_mode()
    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        size = self.input_size_px
        x = torch.from_numpy(resize(image, (size, size)))[None, None].to(self.device)
        probs = torch.sigmoid(self.network(x))[0].amax(dim=0).float().cpu().numpy()
        return resize(probs, image.shape) >= 0.5

    def graph_target(self) -> tuple[torch.nn.Module, tuple[int, ...]]:
        """The network an ONNX graph replaces and its input shape."""
        return self.network, (1, 1, self.input_size_px, self.input_size_px)

    def use_graph(self, network: torch.nn.Module) -> None:
        self.network = network
