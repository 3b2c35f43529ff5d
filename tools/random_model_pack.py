"""Build a models folder of tiny, random-initialised models in the exact on-disk formats of real weights.

Its outputs MEAN NOTHING: they exist so that tests, the README's demo and the MAP build context
exercise the same loading code that reads real weights (a real nnU-Net trained-model folder, a real
torchxrayvision weights file, safetensors + config for our own nets) without any download.

    python -m tools.random_model_pack OUT_DIR [--lung pspnet] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from app.model_store import MANIFEST_NAME, NATIVE_FORMAT, SCHEMA_VERSION, Architecture, sha256_of
from operators.nets.convnext_fpn import ConvNextFpn, ConvNextFpnConfig
from operators.nets.unet import SmallUNet, UNetConfig

XRV_DENSENET_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
XRV_PSPNET_FILE = "pspnet_chestxray_best_model_4.pth"
PROVENANCE = "random initialisation by tools/random_model_pack.py (seed {seed}); meaningless outputs, for tests only"


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


def write_safetensors_folder(folder: Path, module: torch.nn.Module, config: dict, fp16: bool = False) -> Path:
    """``config.json`` + ``model.safetensors`` (optionally fp16; loaders convert back to fp32)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def write_xrv_densenet(folder: Path) -> Path:
    """A random DenseNet-121 pickled as torchxrayvision's own weights file (the whole model object)."""
    saved = warnings.filters[:]
    import torchxrayvision as xrv

    warnings.filters[:] = saved
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(xrv.models.DenseNet(num_classes=18), folder / XRV_DENSENET_FILE)
    return folder


def write_xrv_pspnet(folder: Path) -> Path:
    """A random ChestX-Det PSPNet state dict with DataParallel's ``module.`` prefix, as xrv ships it (~270 MB)."""
    from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

    folder.mkdir(parents=True, exist_ok=True)
    state = {f"module.{k}": v for k, v in pspnet(14).state_dict().items()}
    torch.save(state, folder / XRV_PSPNET_FILE)
    return folder


def _card(folder: Path, role: str, architecture: Architecture, input_size_px: int, seed: int, **extra: object) -> dict:
    files = {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    card = {
        "role": role,
        "architecture": architecture.value,
        "format": NATIVE_FORMAT[architecture],
        "input_size_px": input_size_px,
        "version": "0.0.0-random",
        "provenance": PROVENANCE.format(seed=seed),
        "files": files,
    }
    card.update(extra)
    return card


def build_random_pack(out: Path, seed: int = 0, lung: str = "unet", nnunet_features: tuple[int, ...] = (4, 8, 16, 16, 16)) -> Path:
    """Write a complete models folder (manifest + six model folders) under ``out``; return ``out``."""
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, dict] = {}

    folder = write_xrv_densenet(out / "xrv_densenet121_all")
    models["xrv_densenet121_all"] = _card(folder, "classifier", Architecture.XRV_DENSENET121, 224, seed,
                                          options={"weights": "densenet121-res224-all", "label": "Lung Opacity"})

    fpn_config = ConvNextFpnConfig(trunk="convnext_atto", trunk_kwargs={"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
                                   fpn_channels=16, input_size_px=336)
    folder = write_safetensors_folder(out / "convnext_fpn_clip_336", ConvNextFpn(fpn_config), fpn_config.to_dict(), fp16=True)
    models["convnext_fpn_clip_336"] = _card(folder, "expert", Architecture.CONVNEXT_FPN, 336, seed, calibration={"weighted_logloss": 0.5})

    for name, size, role, logloss in (("nnunet_2d_336", 336, "expert", 0.4), ("nnunet_2d_768", 768, "expert", 0.45),
                                      ("nnunet_refine_256", 256, "refinement", 0.35)):
        folder = write_nnunet_folder(out / name, nnunet_2d_plans(f"Dataset9{size}_Random", size, nnunet_features), nnunet_dataset_json())
        models[name] = _card(folder, role, Architecture.NNUNET_2D, size, seed, options={"label": "opacity", "fold": 0},
                             calibration={"weighted_logloss": logloss})

    if lung == "pspnet":
        folder = write_xrv_pspnet(out / "xrv_pspnet_lungs")
        models["xrv_pspnet_lungs"] = _card(folder, "lung", Architecture.XRV_PSPNET, 512, seed)
    elif lung == "unet":
        unet_config = UNetConfig(base_channels=4, depth=3, out_channels=1, input_size_px=128)
        folder = write_safetensors_folder(out / "lung_unet_128", SmallUNet(unet_config), unet_config.to_dict())
        models["lung_unet_128"] = _card(folder, "lung", Architecture.SMALL_UNET, 128, seed)
    else:
        raise ValueError(f"Unknown lung model {lung!r}; choose 'unet' or 'pspnet'.")

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "pack": {"name": "random-test-pack", "meaningful": False,
                 "description": "Tiny random-initialised models in the real on-disk formats. Outputs mean nothing."},
        "calibration": {"gate_threshold": 0.5, "zone_values": [0.0, 0.3, 0.5, 0.7, 0.9]},
        "models": models,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="models folder to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lung", choices=["unet", "pspnet"], default="unet", help="lung model (pspnet writes ~270 MB)")
    args = parser.parse_args(argv)
    build_random_pack(args.out, seed=args.seed, lung=args.lung)
    print(f"Wrote a random (meaningless) model pack to {args.out}")


if __name__ == "__main__":
    main()
