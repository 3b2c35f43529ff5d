"""What a GPU machine without network needs to train the production pack: the data, compact, and the wheels.

    python -m training.gpu_bundle bundle --data "COVID-QU-Ex/.../Train" --out gpu_carry [--wheels] [--quality 85]
    python -m training.gpu_bundle unpack gpu_carry/cqe.npz DATA_DIR
    python -m training.gpu_bundle bench --out bench_carry      # for bench/gpu_bench.sh: no data, + DICOM decoding

``bundle`` writes ``cqe.npz``: every image of the COVID-QU-Ex folder as JPEG (``--quality``; the
images are 256² 8-bit, JPEG q85 keeps them within a grey level or two where it matters and makes the
3,728 images about 35 MB), the infection and lung masks as 1-bit PNG, the class and file name of each
(the split is derived from the file names, so it is the same split). With ``--wheels`` it also
downloads, for Python 3.12 on manylinux x86_64, the compiled packages the recipes need that the lent
GPU machine lacks (:data:`WHEELS`, no dependencies resolved: that machine has torch, timm, numpy,
scipy and scikit-image) into ``wheels/``, copies the pure-Python ones from this environment into
``site/`` (:data:`PURE_PYTHON`; torchxrayvision without its 28 MB of dataset CSVs, which the recipes
never read), and writes import stubs (``stubs/``) for the large packages nnU-Net imports but never
calls on our path (:data:`STUBS`). It refuses to write more than
:data:`CARRY_LIMIT_BYTES` (the device tool carries 64 MiB). ``unpack`` writes the COVID-QU-Ex layout
back (PNG), for ``training/gpu_pack.sh``.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import COVID_QU_EX_CLASSES

CARRY_LIMIT_BYTES = 60 * 2**20
#: wheels the recipes import that the GPU machine (Python 3.12, torch, timm, numpy, scipy, scikit-image) lacks
WHEELS = ("blosc2", "ndindex", "msgpack", "connected-components-3d", "safetensors")
#: pure-Python packages copied from this environment (same versions as requirements.txt pins)
PURE_PYTHON = ("nnunetv2", "batchgeneratorsv2", "batchgenerators", "dynamic_network_architectures", "acvl_utils", "einops",
               "tqdm", "yacs", "nibabel", "torchxrayvision", "threadpoolctl")
#: packages nnU-Net imports at module level but our recipes never call (stubbed: importing works, using raises)
STUBS = ("SimpleITK", "imagecodecs")
#: what bench/gpu_bench.sh needs beyond the training carry: DICOM decoding (the bench's DICOMs travel with the repository)
BENCH_WHEELS = ("pylibjpeg-libjpeg",)
BENCH_PURE_PYTHON = ("pydicom", "pylibjpeg")
_FOLDERS = {"image": "images", "mask": "infection masks", "lung": "lung masks"}


def _png_bytes(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def bundle_data(data: Path, out: Path, quality: int = 85) -> Path:
    """``out/cqe.npz`` from a COVID-QU-Ex folder (see the module docstring)."""
    names, classes, images, masks, lungs = [], [], [], [], []
    for cls in COVID_QU_EX_CLASSES:
        for path in sorted((Path(data) / cls / "images").glob("*.png")):
            buffer = io.BytesIO()
            Image.open(path).convert("L").save(buffer, "JPEG", quality=quality)
            names.append(path.name)
            classes.append(cls)
            images.append(np.frombuffer(buffer.getvalue(), np.uint8))
            for store, kind in ((masks, "mask"), (lungs, "lung")):
                mask_path = Path(data) / cls / _FOLDERS[kind] / path.name
                mask = np.asarray(Image.open(mask_path).convert("L")) > 127 if mask_path.is_file() else np.zeros((1, 1), bool)
                store.append(np.frombuffer(_png_bytes(mask), np.uint8))
    out.mkdir(parents=True, exist_ok=True)
    target = out / "cqe.npz"
    np.savez(target, names=np.array(names), classes=np.array(classes),
             images=np.array(images, dtype=object), masks=np.array(masks, dtype=object), lungs=np.array(lungs, dtype=object))
    return target


def unpack_data(npz: Path, out: Path) -> Path:
    """Write the COVID-QU-Ex layout (PNG) from ``cqe.npz``; returns ``out``."""
    data = np.load(npz, allow_pickle=True)
    for name, cls, image, mask, lung in zip(data["names"], data["classes"], data["images"], data["masks"], data["lungs"]):
        for kind, payload in (("image", image), ("mask", mask), ("lung", lung)):
            folder = Path(out) / str(cls) / _FOLDERS[kind]
            folder.mkdir(parents=True, exist_ok=True)
            picture = Image.open(io.BytesIO(bytes(payload))).convert("L")
            if kind != "image":  # masks back to 0 / 255
                picture = Image.fromarray((np.asarray(picture) > 0).astype(np.uint8) * 255)
            picture.save(folder / str(name))
    return Path(out)


def write_stubs(out: Path) -> None:
    """Import stubs for :data:`STUBS`: ``import X`` works, any use raises with the reason."""
    for name in STUBS:
        folder = out / "stubs" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(
            f'"""Stub of {name} for the GPU training run (training/gpu_bundle.py): nnU-Net imports it, our recipes never use it."""\n'
            "def __getattr__(attribute):\n"
            f"    raise RuntimeError('{name} is a stub on this machine (training/gpu_bundle.py); ' + attribute + ' is not available')\n")


def download_wheels(out: Path, names: tuple[str, ...] = WHEELS) -> None:
    folder = out / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
                    "--implementation", "cp", "-d", str(folder), *names], check=True)


def copy_pure_python(out: Path, names: tuple[str, ...] = PURE_PYTHON) -> None:
    """The pure-Python packages ``names`` (default :data:`PURE_PYTHON`), from this environment, into ``out/site``."""
    import importlib.util
    import shutil

    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise SystemExit(f"{name} is not installed here; pip install -r requirements.txt first")
        locations = list(spec.submodule_search_locations or [])
        source = Path(locations[0]) if locations else Path(spec.origin)  # a package (namespace ones too), or a module
        target = out / "site" / source.name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.csv.gz", "*.zip", "tests"))
        else:
            shutil.copy(source, target)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bundle")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quality", type=int, default=85)
    p.add_argument("--wheels", action="store_true", help="also download the wheels and write the stubs (needs PyPI)")
    p = sub.add_parser("bench", help="what bench/gpu_bench.sh needs on the GPU machine: wheels, packages, stubs (no data)")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("unpack")
    p.add_argument("npz", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "unpack":
        print(f"unpacked {unpack_data(args.npz, args.out)}")
        return
    if args.command == "bench":
        download_wheels(args.out, WHEELS + BENCH_WHEELS)
        copy_pure_python(args.out, PURE_PYTHON + BENCH_PURE_PYTHON)
        write_stubs(args.out)
    else:
        bundle_data(args.data, args.out, args.quality)
    if args.command == "bundle" and args.wheels:
        download_wheels(args.out)
        copy_pure_python(args.out)
        write_stubs(args.out)
    size = folder_bytes(args.out)
    print(f"{args.out}: {size / 2**20:.1f} MiB (limit {CARRY_LIMIT_BYTES / 2**20:.0f} MiB)")
    if size > CARRY_LIMIT_BYTES:
        raise SystemExit(f"{args.out} is {size / 2**20:.1f} MiB: more than the device tool carries; lower --quality")


if __name__ == "__main__":
    main()
