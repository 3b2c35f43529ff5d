"""Model formats: one registry entry per architecture — its on-disk files, how it loads, how it is written.

Each entry of :data:`FORMATS` says, for one architecture:

* ``name`` — the manifest's ``format`` string;
* ``files(options)`` — the files (relative to the model folder) its loader opens; each must be
  listed in the manifest with its sha256, which is verified before anything is read;
* ``load(name, folder, input_size_px, options, context)`` — the wrapper of
  :mod:`operators.lib.segmenters` built from the folder;
* ``write_random(folder, input_size_px, seed)`` — a tiny random-initialised model written in
  exactly this format (test packs, ``tools/random_model_pack.py``), returning the manifest options.

The writers (:func:`write_safetensors_folder`, :func:`write_nnunet_folder`, :func:`write_xrv_densenet`,
…) are the same functions the training recipes export with, so a test pack and a trained pack are
read by one loader. Only nnU-Net's own checkpoint format is unpickled (after its sha256 matched);
everything else is safetensors or a ``weights_only`` state dict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from operators.lib.segmenters import XRV_PSPNET_FILE, import_xrv, new_xrv_densenet


class Architecture(str, Enum):
    """Architectures the app can load; each maps to one wrapper in ``operators.lib.segmenters``."""

    XRV_DENSENET121 = "xrv-densenet121"
    XRV_PSPNET = "xrv-pspnet"
    CONVNEXT_FPN = "convnext-fpn"
    NNUNET_2D = "nnunet-2d"
    SMALL_UNET = "small-unet"


@dataclass(frozen=True)
class LoadContext:
    """Run-wide loading choices (the same for every model of a pack)."""

    device: torch.device
    nnunet_mirroring: bool = False
    nnunet_tile_step: float = 0.5


#: the public torchxrayvision DenseNet weights our classifier entry stands for
XRV_DENSENET_WEIGHTS = "densenet121-res224-all"


# --------------------------------------------------------------------------- writers

def write_safetensors_folder(folder: Path, module: torch.nn.Module, config: dict, fp16: bool = False) -> Path:
    """``config.json`` + ``model.safetensors`` (optionally fp16; loaders convert back to fp32)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def xrv_densenet_config(weights: str = XRV_DENSENET_WEIGHTS, targets: list[str] | None = None,
                        op_threshs: list[float] | None = None) -> dict:
    """``config.json`` of an xrv DenseNet stored as a state dict: its targets, operating thresholds
    and input size (xrv's published values for ``weights`` unless given)."""
    entry = import_xrv().models.model_urls[weights]
    return {"weights": weights, "targets": list(targets or entry["labels"]),
            "op_threshs": [float(v) for v in (op_threshs if op_threshs is not None else entry["op_threshs"])],
            "input_size_px": int(entry.get("input_resolution", 224))}


def write_xrv_densenet(folder: Path, network: torch.nn.Module | None = None, config: dict | None = None, fp16: bool = False) -> Path:
    """An xrv DenseNet-121 as ``config.json`` + ``model.safetensors`` (random-initialised when no
    network is given). The op_threshs buffer travels in the state dict. BatchNorm layers (statistics and
    affine parameters) stay fp32 when ``fp16``: on xrv's [-1024, 1024] input the first running
    variance is ~1e6, beyond fp16's range."""
    config = config or xrv_densenet_config()
    network = network if network is not None else new_xrv_densenet(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    norms = tuple(f"{name}." for name, module in network.named_modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm))
    state = {}
    for key, value in network.state_dict().items():
        keep = not value.is_floating_point() or not fp16 or key.startswith(norms) or key == "op_threshs"
        state[key] = (value.float() if value.is_floating_point() else value) if keep else value.half()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"non-finite values in the DenseNet state dict: {bad[:3]}")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def write_xrv_pspnet(folder: Path) -> Path:
    """A random ChestX-Det PSPNet state dict with DataParallel's ``module.`` prefix, as xrv ships it (~270 MB)."""
    from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{k}": v for k, v in pspnet(14).state_dict().items()}, folder / XRV_PSPNET_FILE)
    return folder


def nnunet_2d_plans(dataset_name: str, patch_size_px: int, features: tuple[int, ...], batch_size: int = 2) -> dict:
    """A 2D nnU-Net v2 plans dict in the layout ``nnUNetv2_plan_and_preprocess`` writes (natural 2D images).

    One pooling per stage after the first; ``patch_size_px`` must be divisible by 2**(len(features)-1).
    """
    n_stages = len(features)
    if patch_size_px % 2 ** (n_stages - 1):
        raise ValueError(f"patch {patch_size_px} px is not divisible by 2**{n_stages - 1}.")
    configuration = {
        "data_identifier": "nnUNetPlans_2d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size,
        "patch_size": [patch_size_px, patch_size_px],
        "median_image_size_in_voxels": [float(patch_size_px), float(patch_size_px)],
        "spacing": [1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": list(features),
                "conv_op": "torch.nn.modules.conv.Conv2d",
                "kernel_sizes": [[3, 3]] * n_stages,
                "strides": [[1, 1]] + [[2, 2]] * (n_stages - 1),
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": True,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, patch_size_px, patch_size_px],
        "image_reader_writer": "NaturalImage2DIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"2d": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 255.0, "mean": 120.0, "median": 118.0, "min": 0.0, "percentile_00_5": 5.0, "percentile_99_5": 250.0, "std": 55.0}
        },
    }


def nnunet_dataset_json(num_training: int = 0) -> dict:
    """dataset.json for a one-channel CXR dataset with labels background/opacity."""
    return {"channel_names": {"0": "CXR"}, "labels": {"background": 0, "opacity": 1}, "numTraining": num_training, "file_ending": ".png"}


def write_nnunet_folder(folder: Path, plans: dict, dataset_json: dict, network: torch.nn.Module | None = None,
                        trainer_name: str = "nnUNetTrainer", fold: int = 0, epoch: int = 0) -> Path:
    """Write a trained-model folder exactly as ``nnUNetv2_train`` leaves it: dataset.json, plans.json,
    fold_N/checkpoint_final.pth (network weights, optimizer state, logging, init args, trainer name,
    mirroring axes). ``network`` defaults to a random-initialised one built from the plans."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    if network is None:
        arch = plans["configurations"]["2d"]["architecture"]
        network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                         len(dataset_json["channel_names"]), len(dataset_json["labels"]), deep_supervision=True)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    logging_state = {key: [] for key in ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
                                         "epoch_start_timestamps", "epoch_end_timestamps")}
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": logging_state,
        "_best_ema": None,
        "current_epoch": epoch,
        "init_args": {"plans": plans, "configuration": "2d", "fold": fold, "dataset_json": dataset_json, "device": torch.device("cpu")},
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": (0, 1),
    }
    (folder / f"fold_{fold}").mkdir(exist_ok=True)
    torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


# --------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class ModelFormat:
    """One architecture's on-disk format: files, loader, random writer."""

    architecture: Architecture
    name: str
    files: Callable[[Mapping[str, Any]], list[str]]
    load: Callable[[str, Path, int, Mapping[str, Any], LoadContext], Any]
    write_random: Callable[[Path, int, int], dict[str, Any]]


def _safetensors_files(options: Mapping[str, Any]) -> list[str]:
    return ["config.json", "model.safetensors"]


def _nnunet_files(options: Mapping[str, Any]) -> list[str]:
    return ["plans.json", "dataset.json", f"fold_{int(options.get('fold', 0))}/checkpoint_final.pth"]


def _load_densenet(name: str, folder: Path, size: int, options: Mapping[str, Any], context: LoadContext):
    from operators.lib.segmenters import XrvOpacityClassifier

    return XrvOpacityClassifier(name, folder, context.device, label=options.get("label", "Lung Opacity"))


def _load_pspnet(name: str, folder: Path, size: int, options: Mapping[str, Any], context: LoadContext):
    from operators.lib.segmenters import XrvLungSegmenter

    return XrvLungSegmenter(name, folder, context.device)


def _load_convnext(name: str, folder: Path, size: int, options: Mapping[str, Any], context: LoadContext):
    from operators.lib.segmenters import ConvNextFpnSegmenter

    return ConvNextFpnSegmenter(name, folder, context.device)


def _load_unet(name: str, folder: Path, size: int, options: Mapping[str, Any], context: LoadContext):
    from operators.lib.segmenters import UNetLungSegmenter

    return UNetLungSegmenter(name, folder, context.device)


def _load_nnunet(name: str, folder: Path, size: int, options: Mapping[str, Any], context: LoadContext):
    from operators.lib.segmenters import NnUNetSegmenter

    return NnUNetSegmenter(name, folder, context.device, input_size_px=size, label=options.get("label", "opacity"),
                           use_mirroring=context.nnunet_mirroring, tile_step=context.nnunet_tile_step, fold=int(options.get("fold", 0)))


def _random_densenet(folder: Path, size: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    write_xrv_densenet(folder)
    return {"label": "Lung Opacity"}


def _random_pspnet(folder: Path, size: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    write_xrv_pspnet(folder)
    return {}


def _random_convnext(folder: Path, size: int, seed: int) -> dict[str, Any]:
    from operators.nets.convnext_fpn import ConvNextFpn, ConvNextFpnConfig

    torch.manual_seed(seed)
    config = ConvNextFpnConfig(trunk="convnext_atto", trunk_kwargs={"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
                               fpn_channels=16, input_size_px=size)
    write_safetensors_folder(folder, ConvNextFpn(config), config.to_dict(), fp16=True)
    return {}


def _random_unet(folder: Path, size: int, seed: int) -> dict[str, Any]:
    from operators.nets.unet import SmallUNet, UNetConfig

    torch.manual_seed(seed)
    config = UNetConfig(base_channels=4, depth=3, out_channels=1, input_size_px=size)
    write_safetensors_folder(folder, SmallUNet(config), config.to_dict())
    return {}


def _random_nnunet(folder: Path, size: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    write_nnunet_folder(folder, nnunet_2d_plans(f"Dataset9{size % 100:02d}_Random", size, (4, 8, 16, 16, 16)), nnunet_dataset_json())
    return {"label": "opacity", "fold": 0}


FORMATS: dict[Architecture, ModelFormat] = {
    f.architecture: f
    for f in (
        ModelFormat(Architecture.XRV_DENSENET121, "safetensors+config", _safetensors_files, _load_densenet, _random_densenet),
        ModelFormat(Architecture.XRV_PSPNET, "torchxrayvision-state-dict", lambda options: [XRV_PSPNET_FILE], _load_pspnet, _random_pspnet),
        ModelFormat(Architecture.CONVNEXT_FPN, "safetensors+config", _safetensors_files, _load_convnext, _random_convnext),
        ModelFormat(Architecture.NNUNET_2D, "nnunetv2-trained-model-folder", _nnunet_files, _load_nnunet, _random_nnunet),
        ModelFormat(Architecture.SMALL_UNET, "safetensors+config", _safetensors_files, _load_unet, _random_unet),
    )
}
