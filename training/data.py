"""The common dataset layout, the COVID-QU-Ex reader and the deterministic split.

Common layout (what every converter in :mod:`training.convert` writes, and what every recipe reads)::

    ROOT/images/<id>.png     8-bit greyscale radiograph (any size)
    ROOT/masks/<id>.png      8-bit opacity mask, 0 / 255, same size (all zero = no opacity drawn)
    ROOT/lungs/<id>.png      optional 8-bit lung mask, 0 / 255
    ROOT/labels.csv          id,source,class,label,has_mask,has_lungs,split

``label``: 1 opacity present, 0 absent, -1 unknown (an image whose opacity is not outlined, such as
COVID-QU-Ex "Non-COVID": other lung disease, masks empty). ``has_mask`` 1 when the mask is a real
outline (or filled boxes), 0 when the mask file is only a placeholder. ``split``: train / val / calib
(or empty when the converter does not split).

The split (:func:`assign_splits`) is deterministic and stratified: inside each class, files are
ordered by the sha1 of their file name; the first 70 % are ``train``, the next 15 % ``val``, the rest
``calib``. Nothing random, nothing that depends on listing order or machine.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

LABELS_CSV = "labels.csv"
SPLITS = ("train", "val", "calib")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
CSV_FIELDS = ("id", "source", "class", "label", "has_mask", "has_lungs", "split")

#: COVID-QU-Ex classes → image-level opacity label (-1: present but not outlined; see module doc)
COVID_QU_EX_CLASSES = {"COVID-19": 1, "Normal": 0, "Non-COVID": -1}


@dataclass(frozen=True)
class Record:
    """One image of the common layout (paths absolute; ``mask``/``lungs`` None when absent)."""

    id: str
    source: str
    cls: str
    label: int
    image: Path
    mask: Path | None = None
    lungs: Path | None = None
    split: str = ""

    @property
    def has_mask(self) -> bool:
        return self.mask is not None


def safe_id(*parts: str) -> str:
    """A file-system and nnU-Net safe identifier: letters, digits and ``_`` only."""
    text = "_".join(p for p in parts if p)
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
    return text


def name_hash(name: str) -> str:
    """The sha1 of a file name (what orders files inside a class for the split)."""
    return hashlib.sha1(name.encode("utf-8")).hexdigest()


def assign_splits(records: Sequence[Record], fractions: Sequence[float] = DEFAULT_FRACTIONS, key=lambda r: r.image.name) -> list[Record]:
    """Stratified, deterministic split: per class, order by sha1(file name); cut at 70 / 85 %."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three numbers summing to 1; got {list(fractions)}")
    by_class: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_class[record.cls].append(record)
    split_of: dict[str, str] = {}
    for members in by_class.values():
        ordered = sorted(members, key=lambda r: (name_hash(key(r)), r.id))
        n = len(ordered)
        n_train = int(round(n * fractions[0]))
        n_val = int(round(n * (fractions[0] + fractions[1]))) - n_train
        for i, record in enumerate(ordered):
            split_of[record.id] = "train" if i < n_train else ("val" if i < n_train + n_val else "calib")
    return [replace(r, split=split_of[r.id]) for r in records]


def read_covid_qu_ex(root: Path, classes: Iterable[str] = tuple(COVID_QU_EX_CLASSES)) -> list[Record]:
    """COVID-QU-Ex "Infection Segmentation Data/<Train|Val|Test>" folder in its own layout:
    ``<class>/images/*.png``, ``<class>/infection masks/*.png``, ``<class>/lung masks/*.png``.

    Non-COVID masks are empty although opacities are often present: such records get label -1 and
    ``mask`` None (the empty file is not a real "no opacity" outline).
    """
    root = Path(root)
    records: list[Record] = []
    for cls in classes:
        folder = root / cls
        if not (folder / "images").is_dir():
            raise FileNotFoundError(f"{folder / 'images'}: missing; expected COVID-QU-Ex layout <class>/images, <class>/infection masks")
        label = COVID_QU_EX_CLASSES[cls]
        for image in sorted((folder / "images").glob("*.png")):
            mask = folder / "infection masks" / image.name
            lungs = folder / "lung masks" / image.name
            records.append(Record(
                id=safe_id("cqe", image.stem), source="covid-qu-ex", cls=cls, label=label, image=image,
                mask=mask if (label >= 0 and mask.is_file()) else None,
                lungs=lungs if lungs.is_file() else None,
            ))
    ids = [r.id for r in records]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{root}: file names collide after sanitising")
    return records


# --------------------------------------------------------------------------- image I/O

def read_grey(path: Path) -> np.ndarray:
    """8-bit greyscale array of an image file (RGB/RGBA/16-bit are converted)."""
    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I", "F"):
            array = np.asarray(image, dtype=np.float32)
            lo, hi = float(array.min()), float(array.max())
            return np.zeros(array.shape, np.uint8) if hi <= lo else ((array - lo) / (hi - lo) * 255).round().astype(np.uint8)
        return np.asarray(image.convert("L"), dtype=np.uint8)


def read_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask (bool) from a 0/255 (or 0/1) PNG; all-False when ``path`` is None."""
    if path is None:
        return np.zeros(shape, dtype=bool)
    mask = read_grey(path)
    if mask.shape != tuple(shape):
        mask = np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.NEAREST))
    return mask > (127 if mask.max() > 1 else 0)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, compress_level=1)


# --------------------------------------------------------------------------- the common layout

def write_common_layout(records: Sequence[Record], out: Path, copy_pixels: bool = True) -> list[Record]:
    """Write ``records`` into ``out`` in the common layout; returns the records pointing at ``out``.

    Images are re-encoded as 8-bit greyscale PNG; masks as 0/255 PNG (an empty one, with
    ``has_mask`` 0, where the source has none, so every image has a mask file of its size).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Record] = []
    with open(out / LABELS_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for record in records:
            image = read_grey(record.image)
            mask = read_mask(record.mask, image.shape)
            image_path, mask_path = out / "images" / f"{record.id}.png", out / "masks" / f"{record.id}.png"
            if copy_pixels:
                write_png(image_path, image)
                write_png(mask_path, mask)
            lung_path = None
            if record.lungs is not None:
                lung_path = out / "lungs" / f"{record.id}.png"
                if copy_pixels:
                    write_png(lung_path, read_mask(record.lungs, image.shape))
            writer.writerow({"id": record.id, "source": record.source, "class": record.cls, "label": record.label,
                             "has_mask": int(record.has_mask), "has_lungs": int(lung_path is not None), "split": record.split})
            written.append(replace(record, image=image_path, mask=mask_path if record.has_mask else None, lungs=lung_path))
    return written


def read_common_layout(root: Path, splits: Iterable[str] | None = None) -> list[Record]:
    """Records of a common-layout folder (optionally only some splits)."""
    root = Path(root)
    wanted = None if splits is None else set(splits)
    records = []
    with open(root / LABELS_CSV, newline="") as handle:
        for row in csv.DictReader(handle):
            if wanted is not None and row["split"] not in wanted:
                continue
            records.append(Record(
                id=row["id"], source=row["source"], cls=row["class"], label=int(row["label"]),
                image=root / "images" / f"{row['id']}.png",
                mask=root / "masks" / f"{row['id']}.png" if int(row["has_mask"]) else None,
                lungs=root / "lungs" / f"{row['id']}.png" if int(row.get("has_lungs") or 0) else None,
                split=row["split"],
            ))
    return records


def records_from(data: Path, splits: Iterable[str] | None = None) -> list[Record]:
    """Records of ``data``: a common-layout folder (has labels.csv) or a COVID-QU-Ex folder (split on the fly)."""
    data = Path(data)
    if (data / LABELS_CSV).is_file():
        return read_common_layout(data, splits)
    records = assign_splits(read_covid_qu_ex(data))
    wanted = None if splits is None else set(splits)
    return [r for r in records if wanted is None or r.split in wanted]


def split_table(records: Sequence[Record]) -> dict[str, dict[str, int]]:
    """class → split → count (for model cards)."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        table[record.cls][record.split] += 1
    return {cls: dict(counts) for cls, counts in table.items()}


# --------------------------------------------------------------------------- arrays for training

@dataclass
class ArraySet:
    """Images and masks of some records at one size, as uint8 / bool arrays (N×S×S)."""

    ids: list[str]
    classes: list[str]
    labels: np.ndarray  # int8, 1 / 0 / -1
    has_mask: np.ndarray  # bool
    images: np.ndarray  # uint8 N×S×S
    masks: np.ndarray  # bool N×S×S (opacity)
    lungs: np.ndarray  # bool N×S×S (all False where unknown)

    def subset(self, index: np.ndarray) -> "ArraySet":
        index = np.asarray(index)
        return ArraySet([self.ids[i] for i in index], [self.classes[i] for i in index], self.labels[index], self.has_mask[index],
                        self.images[index], self.masks[index], self.lungs[index])

    def __len__(self) -> int:
        return len(self.ids)


def _resize_u8(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    if array.shape == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))


def load_arrays(records: Sequence[Record], size: int, cache: Path | None = None) -> ArraySet:
    """Load (and squash) every record to size×size; cached as ``.npz`` under ``cache`` when given.

    The squash is the app's: the whole image resized to S×S, no crop.
    """
    key = hashlib.sha1(("|".join(f"{r.id}:{r.image}:{r.mask}:{r.lungs}" for r in records) + f"@{size}").encode()).hexdigest()[:16]
    path = None if cache is None else Path(cache) / f"arrays_{size}_{key}.npz"
    if path is not None and path.is_file():
        data = np.load(path, allow_pickle=False)
        return ArraySet(list(data["ids"]), list(data["classes"]), data["labels"], data["has_mask"], data["images"], data["masks"], data["lungs"])
    n = len(records)
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), bool)
    lungs = np.zeros((n, size, size), bool)
    for i, record in enumerate(records):
        image = read_grey(record.image)
        images[i] = _resize_u8(image, size, nearest=False)
        if record.mask is not None:
            masks[i] = _resize_u8(read_mask(record.mask, image.shape).astype(np.uint8) * 255, size, nearest=False) > 127
        if record.lungs is not None:
            lungs[i] = _resize_u8(read_mask(record.lungs, image.shape).astype(np.uint8) * 255, size, nearest=False) > 127
    result = ArraySet([r.id for r in records], [r.cls for r in records], np.array([r.label for r in records], np.int8),
                      np.array([r.has_mask for r in records], bool), images, masks, lungs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, ids=np.array(result.ids), classes=np.array(result.classes), labels=result.labels, has_mask=result.has_mask,
                 images=images, masks=masks, lungs=lungs)
        tmp.replace(path)
    return result


def record_dicts(records: Sequence[Record]) -> list[dict]:
    return [{k: str(v) for k, v in asdict(r).items()} for r in records]
