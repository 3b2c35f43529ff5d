"""Dataset converters into the common layout (:mod:`training.data`) and into nnU-Net's raw format.

    python -m training.convert covid-qu-ex "…/Infection Segmentation Data/Train" OUT
    python -m training.convert qata      QATA_ROOT OUT          # Kaggle "qatacov19-dataset" layout
    python -m training.convert mendeley  MENDELEY_ROOT OUT      # assumed layout, see read_mendeley
    python -m training.convert rsna      DICOM_FOLDER LABELS_CSV OUT [--class-info detailed_class_info.csv]
    python -m training.convert vindr     DICOM_FOLDER ANNOTATIONS_CSV OUT [--classes …]
    python -m training.convert nnunet-raw COMMON_LAYOUT NNUNET_RAW --dataset-id 501 --name CxrOpacity336 --size 336

Every converter assigns the deterministic split of :func:`training.data.assign_splits` (train / val /
calib, 70 / 15 / 15 per class, by sha1 of the file name) unless the source has its own test split,
which stays ``test``. Boxes (RSNA, VinDr) are filled into masks and also kept in ``OUT/boxes.csv``
(id, x0, y0, x1, y1 in the written image's pixels) for the 768 recipe's pseudo-label refinement.
DICOM pixels are decoded with the app's own rules (:func:`operators.lib.dicom_input.decode_pixels`:
modality LUT, VOI LUT / window, MONOCHROME1 inversion), then stored as 8-bit PNG, optionally
down-scaled so the longer side is at most ``--max-side``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import Record, assign_splits, read_covid_qu_ex, read_common_layout, safe_id, write_common_layout, write_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: VinDr-CXR local labels counted as lung opacity (the write-up does not list them; ours)
VINDR_OPACITY_CLASSES = ("Lung Opacity", "Consolidation", "Infiltration", "Edema")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _split(records: list[Record], keep_existing: bool = True) -> list[Record]:
    """Assign train/val/calib to records without a split; records already marked (``test``) keep theirs."""
    todo = [r for r in records if not (keep_existing and r.split)]
    done = {r.id: r for r in assign_splits(todo)} if todo else {}
    return [done.get(r.id, r) for r in records]


# --------------------------------------------------------------------------- QaTa-COV19 (Kaggle)

def read_qata(root: Path) -> list[Record]:
    """QaTa-COV19 as on Kaggle (aysendegerli/qatacov19-dataset)::

        [QaTa-COV19/]QaTa-COV19-v2/Train Set/Images/<name>.png
        [QaTa-COV19/]QaTa-COV19-v2/Train Set/Ground-truths/mask_<name>.png
        [QaTa-COV19/]QaTa-COV19-v2/Test Set/Images, …/Ground-truths

    Every image is COVID-19 with an infection mask (label 1). "Test Set" keeps split ``test``.
    """
    root = Path(root)
    candidates = [root, root / "QaTa-COV19-v2", root / "QaTa-COV19" / "QaTa-COV19-v2"]
    base = next((c for c in candidates if (c / "Train Set").is_dir() or (c / "Test Set").is_dir()), None)
    if base is None:
        raise FileNotFoundError(f"{root}: no 'Train Set' / 'Test Set' folder (QaTa-COV19-v2 Kaggle layout)")
    records = []
    for subset, split in (("Train Set", ""), ("Test Set", "test")):
        folder = base / subset
        if not folder.is_dir():
            continue
        for image in _images(folder / "Images"):
            mask = folder / "Ground-truths" / f"mask_{image.name}"
            if not mask.is_file():
                mask = folder / "Ground-truths" / f"mask_{image.stem}.png"
            records.append(Record(id=safe_id("qata", image.stem), source="qata-cov19", cls="COVID-19", label=1, image=image,
                                  mask=mask if mask.is_file() else None, split=split))
    return _split(records)


# --------------------------------------------------------------------------- Mendeley (36fjrg9s69)

def _supervisely_mask(annotation: Path, shape: tuple[int, int], lung_words=("lung",)) -> np.ndarray:
    """Union of the bitmap objects of a Supervisely annotation JSON whose class is not a lung."""
    data = json.loads(Path(annotation).read_text())
    mask = np.zeros(shape, bool)
    for obj in data.get("objects", []):
        if any(word in obj.get("classTitle", "").lower() for word in lung_words):
            continue
        bitmap = obj.get("bitmap")
        if obj.get("geometryType") == "bitmap" and bitmap:
            patch = np.asarray(Image.open(io.BytesIO(zlib.decompress(base64.b64decode(bitmap["data"])))))
            patch = (patch[..., 3] if patch.ndim == 3 and patch.shape[-1] == 4 else patch.reshape(patch.shape[0], patch.shape[1], -1)[..., 0]) > 0
            x, y = bitmap["origin"]
            h, w = min(patch.shape[0], shape[0] - y), min(patch.shape[1], shape[1] - x)
            mask[y:y + h, x:x + w] |= patch[:h, :w]
    return mask


def read_mendeley(root: Path, scratch: Path | None = None) -> list[Record]:
    """"Dataset for COVID-19 segmentation and severity scoring" (Danilov et al., Mendeley 36fjrg9s69).

    ASSUMED layout (we could not establish the archive's exact tree; see docs/training.md)::

        ROOT[/<subset>]/img/<name>.<png|jpg>             the radiographs
        ROOT[/<subset>]/mask/<name>.png                  binary disease mask (0 / >0), same stem, or
        ROOT[/<subset>]/ann/<name>.<ext>.json            Supervisely annotation (bitmap objects;
                                                        classes containing "lung" are ignored)
        ROOT[/<subset>]/metadata.csv (optional)          column "label" / "class": "Normal" → label 0

    An image with neither a mask nor an annotation is skipped. Supervisely masks are rasterised
    into ``scratch`` (default ``ROOT/../_mendeley_masks``) before the common-layout write.
    """
    root = Path(root)
    subsets = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    scratch = Path(scratch) if scratch else root.parent / "_mendeley_masks"
    records = []
    for subset in subsets:
        if not (subset / "img").is_dir():
            continue
        classes: dict[str, str] = {}
        meta = subset / "metadata.csv"
        if meta.is_file():
            with open(meta, newline="") as handle:
                for row in csv.DictReader(handle):
                    name = row.get("image") or row.get("filename") or row.get("file") or ""
                    classes[Path(name).stem] = row.get("label") or row.get("class") or ""
        for image in _images(subset / "img"):
            mask = subset / "mask" / f"{image.stem}.png"
            if not mask.is_file():
                annotation = subset / "ann" / f"{image.name}.json"
                if not annotation.is_file():
                    continue
                with Image.open(image) as opened:
                    shape = (opened.height, opened.width)
                mask = scratch / subset.name / f"{image.stem}.png"
                write_png(mask, _supervisely_mask(annotation, shape))
            cls = classes.get(image.stem, "")
            has_opacity = bool(np.asarray(Image.open(mask)).any())
            label = 0 if cls.lower() == "normal" else int(has_opacity) if cls == "" else 1
            records.append(Record(id=safe_id("mendeley", subset.name if subset != root else "", image.stem), source="mendeley-36fjrg9s69",
                                  cls=cls or ("COVID-19" if has_opacity else "Normal"), label=label, image=image, mask=mask))
    if not records:
        raise FileNotFoundError(f"{root}: no img/ + mask/ (or ann/) folders found (assumed Mendeley layout, see read_mendeley)")
    return _split(records)


# --------------------------------------------------------------------------- DICOM + boxes (RSNA, VinDr)

def read_dicom_u8(path: Path, max_side: int = 0) -> tuple[np.ndarray, float]:
    """DICOM → 8-bit image with the app's decoding rules; returns (image, scale applied)."""
    from operators.lib.dicom_input import decode_pixels, read_dicom

    dataset = read_dicom(Path(path))
    pixels = decode_pixels(dataset, Path(path))
    image = np.clip(np.round(np.asarray(pixels, np.float32) * 255.0), 0, 255).astype(np.uint8)
    scale = 1.0
    if max_side and max(image.shape) > max_side:
        scale = max_side / max(image.shape)
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return image, scale


def fill_boxes(shape: tuple[int, int], boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Boolean mask with every (x0, y0, x1, y1) box filled (pixel edges rounded, clipped to the image)."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(shape[1], int(np.ceil(x1))), min(shape[0], int(np.ceil(y1)))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def _write_box_dataset(items: list[tuple[str, str, str, int, Path, list]], out: Path, source: str, max_side: int) -> list[Record]:
    """items: (id, class, split, label, dicom path, boxes in source pixels) → common layout + boxes.csv."""
    out = Path(out)
    scratch = out / "_scratch"
    records, box_rows = [], []
    for record_id, cls, split, label, dicom, boxes in items:
        image, scale = read_dicom_u8(dicom, max_side)
        scaled = [(x0 * scale, y0 * scale, x1 * scale, y1 * scale) for x0, y0, x1, y1 in boxes]
        image_path, mask_path = scratch / "images" / f"{record_id}.png", scratch / "masks" / f"{record_id}.png"
        write_png(image_path, image)
        write_png(mask_path, fill_boxes(image.shape, scaled))
        records.append(Record(id=record_id, source=source, cls=cls, label=label, image=image_path, mask=mask_path, split=split))
        box_rows += [{"id": record_id, "x0": round(b[0], 1), "y0": round(b[1], 1), "x1": round(b[2], 1), "y1": round(b[3], 1)} for b in scaled]
    written = write_common_layout(_split(records), out)
    with open(out / "boxes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "x0", "y0", "x1", "y1"])
        writer.writeheader()
        writer.writerows(box_rows)
    for path in sorted(scratch.rglob("*.png")):
        path.unlink()
    for folder in sorted((p for p in scratch.rglob("*") if p.is_dir()), reverse=True):
        folder.rmdir()
    scratch.rmdir()
    return written


def convert_rsna(dicom_folder: Path, labels_csv: Path, out: Path, class_info: Path | None = None, max_side: int = 1024) -> list[Record]:
    """RSNA Pneumonia Detection Challenge: ``<patientId>.dcm`` + ``stage_*_train_labels.csv``
    (patientId, x, y, width, height, Target). Target 1 rows are opacity boxes → filled mask, label 1;
    patients with Target 0 only → empty mask, label 0 (boxes were drawn for every opacity). Class
    from ``detailed_class_info.csv`` when given. Patients without a DICOM are skipped."""
    boxes: dict[str, list] = defaultdict(list)
    with open(labels_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            boxes.setdefault(row["patientId"], [])
            if int(float(row["Target"])) == 1:
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                boxes[row["patientId"]].append((x, y, x + w, y + h))
    classes: dict[str, str] = {}
    if class_info is not None:
        with open(class_info, newline="") as handle:
            classes = {row["patientId"]: row["class"] for row in csv.DictReader(handle)}
    items = []
    for patient, patient_boxes in sorted(boxes.items()):
        dicom = Path(dicom_folder) / f"{patient}.dcm"
        if not dicom.is_file():
            continue
        label = int(bool(patient_boxes))
        items.append((safe_id("rsna", patient), classes.get(patient, "Lung Opacity" if label else "No opacity"), "", label, dicom, patient_boxes))
    return _write_box_dataset(items, out, "rsna-pneumonia", max_side)


def convert_vindr(dicom_folder: Path, annotations_csv: Path, out: Path, classes: tuple[str, ...] = VINDR_OPACITY_CLASSES,
                  max_side: int = 1024, split_name: str = "") -> list[Record]:
    """VinDr-CXR: ``<image_id>.dicom`` (or ``.dcm``) + ``annotations_train.csv`` / ``train.csv``
    (image_id, rad_id, class_name, x_min, y_min, x_max, y_max, …). Boxes of ``classes`` from every
    radiologist are united → filled mask, label 1; images without such a box → empty mask, label 0.
    ``split_name="test"`` marks the official test set."""
    boxes: dict[str, list] = defaultdict(list)
    with open(annotations_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            boxes.setdefault(row["image_id"], [])
            if row["class_name"] in classes and row.get("x_min") not in (None, ""):
                boxes[row["image_id"]].append(tuple(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
    items = []
    for image_id, image_boxes in sorted(boxes.items()):
        dicom = next((p for p in (Path(dicom_folder) / f"{image_id}.dicom", Path(dicom_folder) / f"{image_id}.dcm") if p.is_file()), None)
        if dicom is None:
            continue
        label = int(bool(image_boxes))
        items.append((safe_id("vindr", image_id), "Lung opacity" if label else "No opacity", split_name, label, dicom, image_boxes))
    return _write_box_dataset(items, out, "vindr-cxr", max_side)


def read_boxes(folder: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """``boxes.csv`` of a converted box dataset: id → boxes (x0, y0, x1, y1)."""
    out: dict[str, list] = defaultdict(list)
    path = Path(folder) / "boxes.csv"
    if path.is_file():
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                out[row["id"]].append(tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1")))
    return dict(out)


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("covid-qu-ex", help="COVID-QU-Ex Infection Segmentation Data/<Train|Val|Test>")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--as-split", default="", help="mark every image with this split (e.g. test) instead of splitting")
    for name in ("qata", "mendeley"):
        p = sub.add_parser(name)
        p.add_argument("src", type=Path)
        p.add_argument("out", type=Path)
    p = sub.add_parser("rsna")
    p.add_argument("dicoms", type=Path)
    p.add_argument("labels_csv", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--class-info", type=Path, default=None)
    p.add_argument("--max-side", type=int, default=1024)
    p = sub.add_parser("vindr")
    p.add_argument("dicoms", type=Path)
    p.add_argument("annotations_csv", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--classes", nargs="+", default=list(VINDR_OPACITY_CLASSES))
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--split", default="", help="e.g. test for VinDr's official test set")
    p = sub.add_parser("nnunet-raw", help="common layout → nnU-Net raw (imagesTr/<id>_0000.png, labelsTr, dataset.json)")
    p.add_argument("src", type=Path)
    p.add_argument("raw", type=Path)
    p.add_argument("--dataset-id", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)

    if args.command == "covid-qu-ex":
        records = read_covid_qu_ex(args.src)
        from dataclasses import replace

        records = [replace(r, split=args.as_split) for r in records] if args.as_split else assign_splits(records)
        written = write_common_layout(records, args.out)
    elif args.command == "qata":
        written = write_common_layout(read_qata(args.src), args.out)
    elif args.command == "mendeley":
        written = write_common_layout(read_mendeley(args.src, args.out / "_supervisely_masks"), args.out)
    elif args.command == "rsna":
        written = convert_rsna(args.dicoms, args.labels_csv, args.out, args.class_info, args.max_side)
    elif args.command == "vindr":
        written = convert_vindr(args.dicoms, args.annotations_csv, args.out, tuple(args.classes), args.max_side, args.split)
    else:
        from training.nnunet import export_raw

        records = [r for r in read_common_layout(args.src, args.splits) if r.label >= 0 and (r.has_mask or r.label == 0)]
        folder = export_raw(records, args.raw, args.dataset_id, args.name, args.size)
        print(f"wrote {len(records)} cases to {folder}")
        return
    print(f"wrote {len(written)} images to {args.out}")


if __name__ == "__main__":
    main()
