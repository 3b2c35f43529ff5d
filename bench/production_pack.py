"""Production-size architectures with random weights, in the app's models-folder format (bench profile a).

nnU-Net: default-like 2D plans (features 32 → 512, one pooling per stage down to a few pixels);
ConvNeXt-Base FPN (256 channels) at 336; torchxrayvision DenseNet-121 at 224; xrv PSPNet at 512;
refinement nnU-Net at 256. Random weights: timings are real, outputs mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from app.model_formats import Architecture, nnunet_2d_plans, nnunet_dataset_json, write_nnunet_folder, write_safetensors_folder, write_xrv_densenet, write_xrv_pspnet
from app.model_store import MANIFEST_NAME, SCHEMA_VERSION
from operators.nets.convnext_fpn import ConvNextFpn, ConvNextFpnConfig
from operators.nets.unet import SmallUNet, UNetConfig
from tools.random_model_pack import model_card

VERSION, PROVENANCE = "0.0.0-random", "production-size architecture, random weights (bench/production_pack.py, seed {seed})"


def _card(folder: Path, role: str, architecture: Architecture, input_size_px: int, seed: int, **extra: object) -> dict:
    return model_card(folder, role, architecture, input_size_px, VERSION, PROVENANCE.format(seed=seed), **extra)

#: default-like nnU-Net 2D plans: features double from 32 and cap at 512, pooling while divisible
NNUNET_FEATURES = {336: (32, 64, 128, 256, 512), 768: (32, 64, 128, 256, 512, 512, 512), 256: (32, 64, 128, 256, 512, 512, 512)}


#: the project's light lung model at production size (the reference pack's lung_unet_128 config, 256 px)
LIGHT_LUNG = UNetConfig(base_channels=8, depth=4, out_channels=1, input_size_px=256)


def build_production_pack(out: Path, seed: int = 0, lung: str = "pspnet") -> Path:
    """Write the production-size random pack to ``out`` (about 1 GB); skip if already complete.

    ``lung``: ``pspnet`` (torchxrayvision's PSPNet at 512, the issue's production profile) or
    ``light`` (the project's small U-Net at 256, :data:`LIGHT_LUNG`)."""
    out = Path(out)
    if (out / MANIFEST_NAME).is_file():
        return out
    torch.manual_seed(seed)
    models: dict[str, dict] = {}
    folder = write_xrv_densenet(out / "xrv_densenet121_all")
    models["xrv_densenet121_all"] = _card(folder, "classifier", Architecture.XRV_DENSENET121, 224, seed, options={"label": "Lung Opacity"})
    config = ConvNextFpnConfig(trunk="convnext_base", fpn_channels=256, input_size_px=336)
    folder = write_safetensors_folder(out / "convnext_fpn_clip_336", ConvNextFpn(config), config.to_dict(), fp16=True)
    models["convnext_fpn_clip_336"] = _card(folder, "expert", Architecture.CONVNEXT_FPN, 336, seed, calibration={"weighted_logloss": 0.5})
    for name, size, role in (("nnunet_2d_336", 336, "expert"), ("nnunet_2d_768", 768, "expert"), ("nnunet_refine_256", 256, "refinement")):
        folder = write_nnunet_folder(out / name, nnunet_2d_plans(f"Dataset9{size}_Production", size, NNUNET_FEATURES[size]),
                                     nnunet_dataset_json())
        models[name] = _card(folder, role, Architecture.NNUNET_2D, size, seed, options={"label": "opacity", "fold": 0},
                             calibration={"weighted_logloss": 0.4})
    if lung == "pspnet":
        folder = write_xrv_pspnet(out / "xrv_pspnet_lungs")
        models["xrv_pspnet_lungs"] = _card(folder, "lung", Architecture.XRV_PSPNET, 512, seed)
    else:
        folder = write_safetensors_folder(out / "lung_unet_256", SmallUNet(LIGHT_LUNG), LIGHT_LUNG.to_dict())
        models["lung_unet_256"] = _card(folder, "lung", Architecture.SMALL_UNET, LIGHT_LUNG.input_size_px, seed)
    manifest = {"schema_version": SCHEMA_VERSION,
                "pack": {"name": "production-size-random", "meaningful": False,
                         "description": "Production-size architectures, random weights, for benchmarks only."},
                "calibration": {"gate_threshold": 0.5}, "models": models}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out
