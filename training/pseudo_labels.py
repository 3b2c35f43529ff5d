"""Stage two of the 768 nnU-Net recipe: VinDr pseudo-labels from the stage-one model, refined by VinDr's boxes.

    python -m training.pseudo_labels --model STAGE_ONE_NNUNET_FOLDER --size 768 --data VINDR_COMMON_LAYOUT --out PSEUDO_LAYOUT

then train stage two on them, starting from stage one::

    python -m training.nnunet --data PSEUDO_LAYOUT [segmentation data …] --init STAGE_ONE_NNUNET_FOLDER …

Refinement rule (ours; the write-up only says the boxes "are used to refine predicted masks"), per image:

* the stage-one map p is predicted exactly as the app does (:func:`operators.lib.segmenters.predict_expert`
  with :class:`NnUNetSegmenter`, whole image squashed to ``--size``);
* outside every opacity box the pseudo-label is 0 (the radiologists saw no opacity there);
* inside a box it is p ≥ ``--threshold``; when that covers less than ``--min-cover`` (20 %) of the
  box — stage one missed the finding — the ellipse inscribed in the box is used instead;
* images without an opacity box get an empty mask (clean negatives).
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
import torch

from training.convert import read_boxes
from training.data import read_common_layout, read_grey, write_png


def ellipse_in_box(shape: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    cy, cx, ry, rx = (y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5, max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0


def refine_with_boxes(prob: np.ndarray, boxes: list[tuple[float, float, float, float]], threshold: float = 0.5, min_cover: float = 0.2) -> np.ndarray:
    """The refinement rule of the module docstring; ``prob`` at the image's own size."""
    from training.convert import fill_boxes

    out = np.zeros(prob.shape, bool)
    for box in boxes:
        region = fill_boxes(prob.shape, [box])
        if not region.any():
            continue
        inside = region & (prob >= threshold)
        out |= inside if inside.sum() >= min_cover * region.sum() else (ellipse_in_box(prob.shape, box) & region)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="stage-one nnU-Net model folder (app format)")
    parser.add_argument("--size", type=int, required=True, help="the model's input size (manifest input_size_px)")
    parser.add_argument("--data", type=Path, required=True, help="VinDr common layout with boxes.csv (training.convert vindr)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--min-cover", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from operators.lib.segmenters import NnUNetSegmenter, predict_expert

    model = NnUNetSegmenter("stage1", args.model, torch.device("cpu"), input_size_px=args.size)
    boxes = read_boxes(args.data)
    records = read_common_layout(args.data)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    with open(args.data / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for record in records:
        image = read_grey(record.image)
        image_boxes = boxes.get(record.id, [])
        if image_boxes:
            _, prob = predict_expert(model, image.astype(np.float32) / 255.0)
            mask = refine_with_boxes(prob, image_boxes, args.threshold, args.min_cover)
        else:
            mask = np.zeros(image.shape, bool)
        shutil.copy(record.image, args.out / "images" / record.image.name)
        write_png(args.out / "masks" / f"{record.id}.png", mask)
    for row in rows:
        row["has_mask"] = 1
        row["source"] = row["source"] + "-pseudo"
    with open(args.out / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy(args.data / "boxes.csv", args.out / "boxes.csv")
    print(f"wrote {len(records)} pseudo-labelled images to {args.out}")


if __name__ == "__main__":
    main()
