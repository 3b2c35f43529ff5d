"""Training crops for the refinement nnU-Net (write-up step 3: "trained on the crops containing lung opacities").

    python -m training.crops --data DATA --out CROPS_FOLDER [--jitter 0.1] [--negatives-per-image 1]

Positives: for every image with an outlined opacity, the connected components of its mask are boxed,
padded and clamped exactly as the app does at inference (:mod:`operators.lib.components` with the
default preset's ``min_component_fraction``, ``crop_pad_fraction`` and ``min_crop_fraction``), with
the padding jittered by ±``--jitter`` so the model sees the slightly different boxes that expert
masks give. Negatives: from clean negative images (label 0), random boxes of the same size range,
so the model learns to return nothing where the experts fired wrongly. Output: a common-layout
folder (crops at their native pixel size; the nnU-Net export squashes them), split inherited from
the source image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.presets import get_preset
from operators.lib.components import Box, component_boxes, pad_box
from training.data import Record, read_grey, read_mask, records_from, write_common_layout, write_png


def crop_boxes(mask: np.ndarray, rng: np.random.RandomState, jitter: float, max_components: int = 3) -> list[Box]:
    preset = get_preset("zones")
    shape = mask.shape
    boxes = component_boxes(mask, max_components, min_area_px=max(1, int(preset.min_component_fraction * mask.size)))
    out = []
    for box in boxes:
        pad = max(0.0, preset.crop_pad_fraction + rng.uniform(-jitter, jitter))
        out.append(pad_box(box, shape, pad, int(preset.min_crop_fraction * min(shape))))
    return out


def random_box(shape: tuple[int, int], rng: np.random.RandomState) -> Box:
    rows, cols = shape
    side_r = int(rng.uniform(0.15, 0.5) * rows)
    side_c = int(rng.uniform(0.15, 0.45) * cols)
    top = int(rng.uniform(0.1, 0.9) * rows - side_r / 2)
    left = int(rng.uniform(0.1, 0.9) * cols - side_c / 2)
    top, left = min(max(0, top), rows - side_r), min(max(0, left), cols - side_c)
    return Box(top, left, top + side_r, left + side_c)


def make_crops(records: list[Record], out: Path, jitter: float = 0.1, negatives_per_image: int = 1, seed: int = 0) -> list[Record]:
    rng = np.random.RandomState(seed)
    tmp = Path(out) / "_crops"
    crops: list[Record] = []
    for record in records:
        if record.label < 0 or (record.label == 1 and record.mask is None):
            continue
        image = read_grey(record.image)
        mask = read_mask(record.mask, image.shape)
        boxes = crop_boxes(mask, rng, jitter) if mask.any() else [random_box(image.shape, rng) for _ in range(negatives_per_image)]
        for k, box in enumerate(boxes):
            crop_id = f"{record.id}_c{k}"
            image_path, mask_path = tmp / "images" / f"{crop_id}.png", tmp / "masks" / f"{crop_id}.png"
            write_png(image_path, image[box.top:box.bottom, box.left:box.right])
            write_png(mask_path, mask[box.top:box.bottom, box.left:box.right])
            crops.append(Record(id=crop_id, source=f"{record.source}-crop", cls=record.cls, label=int(mask[box.top:box.bottom, box.left:box.right].any()),
                                image=image_path, mask=mask_path, split=record.split))
    written = write_common_layout(crops, out)
    for path in sorted(tmp.rglob("*.png")):
        path.unlink()
    for folder in (tmp / "images", tmp / "masks", tmp):
        folder.rmdir()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--negatives-per-image", type=int, default=1)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    if (args.out / "labels.csv").is_file():
        print(f"{args.out}: crops already written")
        return
    records = [r for data in args.data for r in records_from(data, args.splits)]
    written = make_crops(records, args.out, args.jitter, args.negatives_per_image)
    print(f"wrote {len(written)} crops to {args.out}")


if __name__ == "__main__":
    main()
