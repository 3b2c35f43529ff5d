"""Build a models folder of tiny, random-initialised models in the exact on-disk formats of real weights.

Its outputs MEAN NOTHING: they exist so that tests, the README's demo and the MAP build context
exercise the same loading code that reads real weights, without any download. Each model is written
by its format's own ``write_random`` (:data:`app.model_formats.FORMATS`).

    python -m tools.random_model_pack OUT_DIR [--lung pspnet] [--seed 0] [--gate-threshold T]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.model_formats import FORMATS, Architecture
from app.model_store import MANIFEST_NAME, SCHEMA_VERSION, sha256_of

PROVENANCE = "random initialisation by tools/random_model_pack.py (seed {seed}); meaningless outputs, for tests only"


def model_card(folder: Path, role: str, architecture: Architecture, input_size_px: int, version: str, provenance: str,
               **extra: Any) -> dict:
    """The manifest entry of the model written in ``folder``: every file in it with its sha256."""
    folder = Path(folder)
    card = {
        "role": role,
        "architecture": architecture.value,
        "format": FORMATS[architecture].name,
        "input_size_px": input_size_px,
        "version": version,
        "provenance": provenance,
        "files": {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()},
    }
    card.update({k: v for k, v in extra.items() if v})
    return card


#: the random pack's models: name, role, architecture, input size, Weighted log-loss
RANDOM_MODELS: tuple[tuple[str, str, Architecture, int, float | None], ...] = (
    ("xrv_densenet121_all", "classifier", Architecture.XRV_DENSENET121, 224, None),
    ("convnext_fpn_clip_336", "expert", Architecture.CONVNEXT_FPN, 336, 0.5),
    ("nnunet_2d_336", "expert", Architecture.NNUNET_2D, 336, 0.4),
    ("nnunet_2d_768", "expert", Architecture.NNUNET_2D, 768, 0.45),
    ("nnunet_refine_256", "refinement", Architecture.NNUNET_2D, 256, 0.35),
)


def build_random_pack(out: Path, seed: int = 0, lung: str = "unet", calibration: dict | None = None,
                      model_calibration: dict[str, dict] | None = None, nnunet_px: int | None = None) -> Path:
    """Write a complete models folder (manifest + six model folders) under ``out``; return ``out``.

    ``calibration`` replaces the pack-level calibration; ``model_calibration`` is merged into each
    named model's calibration (tests that need a particular gate threshold or score mapping);
    ``nnunet_px`` makes every nnU-Net that size instead (fast packs for many-study tests)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if lung not in ("unet", "pspnet"):
        raise ValueError(f"Unknown lung model {lung!r}; choose 'unet' or 'pspnet'.")
    lung_entry = (("xrv_pspnet_lungs", "lung", Architecture.XRV_PSPNET, 512, None) if lung == "pspnet"
                  else ("lung_unet_128", "lung", Architecture.SMALL_UNET, 128, None))
    models: dict[str, dict] = {}
    for index, (name, role, architecture, size, logloss) in enumerate(RANDOM_MODELS + (lung_entry,)):
        size = nnunet_px if nnunet_px and architecture is Architecture.NNUNET_2D else size
        options = FORMATS[architecture].write_random(out / name, size, seed + index)
        model_calibration_entry = {"weighted_logloss": logloss} if logloss else {}
        model_calibration_entry.update((model_calibration or {}).get(name, {}))
        models[name] = model_card(out / name, role, architecture, size, "0.0.0-random", PROVENANCE.format(seed=seed),
                                  options=options, calibration=model_calibration_entry)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "pack": {"name": "random-test-pack", "meaningful": False,
                 "description": "Tiny random-initialised models in the real on-disk formats. Outputs mean nothing."},
        "calibration": calibration if calibration is not None else {"gate_threshold": 0.5, "zone_values": [0.0, 0.3, 0.5, 0.7, 0.9]},
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
