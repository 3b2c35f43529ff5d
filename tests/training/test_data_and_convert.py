"""Common layout, deterministic split and every dataset converter, on small real subsets."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from training import convert
from training.data import (assign_splits, load_arrays, read_common_layout, read_covid_qu_ex, records_from, split_table,
                           write_common_layout)


def test_split_is_deterministic_stratified_and_complete(cqe_full):
    records = read_covid_qu_ex(cqe_full)
    first = {r.id: r.split for r in assign_splits(records)}
    again = {r.id: r.split for r in assign_splits(list(reversed(records)))}
    assert first == again  # independent of listing order
    table = split_table(assign_splits(records))
    for cls, counts in table.items():
        total = sum(counts.values())
        assert set(counts) == {"train", "val", "calib"}
        assert abs(counts["train"] / total - 0.70) < 0.01 and abs(counts["val"] / total - 0.15) < 0.01, (cls, counts)


def test_covid_qu_ex_labels_and_non_covid_policy(cqe_subset):
    records = read_covid_qu_ex(cqe_subset)
    by_class = {r.cls: r for r in records}
    assert by_class["COVID-19"].label == 1 and by_class["COVID-19"].mask is not None
    assert by_class["Normal"].label == 0 and by_class["Normal"].mask is not None  # a real, empty outline
    assert by_class["Non-COVID"].label == -1 and by_class["Non-COVID"].mask is None  # opacity not outlined
    assert all(r.lungs is not None for r in records)


def test_common_layout_round_trip(cqe_subset, tmp_path):
    written = write_common_layout(assign_splits(read_covid_qu_ex(cqe_subset)), tmp_path / "common")
    back = read_common_layout(tmp_path / "common")
    assert [(r.id, r.label, r.split, r.has_mask) for r in back] == [(r.id, r.label, r.split, r.has_mask) for r in written]
    positive = next(r for r in back if r.label == 1)
    mask = np.asarray(Image.open(positive.mask))
    assert set(np.unique(mask)) <= {0, 255} and mask.any()
    arrays = load_arrays(back, 64, tmp_path / "cache")
    assert arrays.images.shape == (len(back), 64, 64) and arrays.masks[arrays.labels == 1].any()
    again = load_arrays(back, 64, tmp_path / "cache")  # from the cache
    assert np.array_equal(again.images, arrays.images)
    assert len(records_from(cqe_subset, ["train"])) == sum(r.split == "train" for r in written)


def _real_pngs(cqe_subset, count):
    folder = cqe_subset / "COVID-19"
    names = sorted(p.name for p in (folder / "images").glob("*.png"))[:count]
    return [(folder / "images" / n, folder / "infection masks" / n) for n in names]


def test_qata_kaggle_layout(cqe_subset, tmp_path):
    base = tmp_path / "QaTa-COV19" / "QaTa-COV19-v2"
    pairs = _real_pngs(cqe_subset, 5)
    for i, (image, mask) in enumerate(pairs):
        subset = "Test Set" if i == 0 else "Train Set"
        (base / subset / "Images").mkdir(parents=True, exist_ok=True)
        (base / subset / "Ground-truths").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, base / subset / "Images" / f"sub-S{i}_x-ray.png")
        shutil.copy(mask, base / subset / "Ground-truths" / f"mask_sub-S{i}_x-ray.png")
    convert.main(["qata", str(tmp_path / "QaTa-COV19"), str(tmp_path / "out")])
    records = read_common_layout(tmp_path / "out")
    assert len(records) == 5 and all(r.label == 1 and r.has_mask for r in records)
    assert sum(r.split == "test" for r in records) == 1
    assert all(r.split in ("train", "val", "calib") for r in records if r.id != "qata_sub_S0_x_ray")


def test_mendeley_assumed_layout_masks_and_supervisely(cqe_subset, tmp_path):
    root = tmp_path / "mendeley"
    pairs = _real_pngs(cqe_subset, 3)
    (root / "covid" / "img").mkdir(parents=True)
    (root / "covid" / "mask").mkdir(parents=True)
    (root / "covid" / "ann").mkdir(parents=True)
    shutil.copy(pairs[0][0], root / "covid" / "img" / "a.png")
    shutil.copy(pairs[0][1], root / "covid" / "mask" / "a.png")
    # a Supervisely bitmap annotation for the second image: a 10×20 block at (x=30, y=40), plus a lung object to ignore
    import base64
    import io
    import zlib

    shutil.copy(pairs[1][0], root / "covid" / "img" / "b.png")
    patch = np.zeros((10, 20, 4), np.uint8)
    patch[..., 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(patch, "RGBA").save(buffer, format="PNG")
    data = base64.b64encode(zlib.compress(buffer.getvalue())).decode()
    objects = [{"classTitle": "COVID-19", "geometryType": "bitmap", "bitmap": {"data": data, "origin": [30, 40]}},
               {"classTitle": "Lungs", "geometryType": "bitmap", "bitmap": {"data": data, "origin": [0, 0]}}]
    (root / "covid" / "ann" / "b.png.json").write_text(json.dumps({"objects": objects}))
    shutil.copy(pairs[2][0], root / "covid" / "img" / "c_no_label.png")  # skipped: no mask, no annotation
    convert.main(["mendeley", str(root), str(tmp_path / "out")])
    records = {r.id: r for r in read_common_layout(tmp_path / "out")}
    assert set(records) == {"mendeley_covid_a", "mendeley_covid_b"}
    mask_b = np.asarray(Image.open(records["mendeley_covid_b"].mask)) > 0
    assert mask_b.sum() == 200 and mask_b[40:50, 30:50].all() and not mask_b[0:10, 0:20].any()


def test_rsna_real_dicoms_boxes_to_masks(rsna_dir, tmp_path):
    written = convert.convert_rsna(rsna_dir, rsna_dir / "stage_1_train_labels.csv", tmp_path / "rsna", rsna_dir / "detailed_class_info.csv",
                                   max_side=512)
    assert len(written) == 5
    with open(rsna_dir / "stage_1_train_labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    positives = {r["patientId"] for r in rows if r["Target"] == "1"}
    for record in written:
        mask = np.asarray(Image.open(tmp_path / "rsna" / "masks" / f"{record.id}.png")) > 0
        image = np.asarray(Image.open(tmp_path / "rsna" / "images" / f"{record.id}.png"))
        assert image.shape == mask.shape == (512, 512) and image.std() > 10
        patient = next(p for p in {r["patientId"] for r in rows} if record.id.endswith(p.replace("-", "_")))
        assert record.label == int(patient in positives) == int(mask.any())
    boxes = convert.read_boxes(tmp_path / "rsna")
    first = next(r for r in rows if r["Target"] == "1")
    x, y, w, h = (float(first[k]) / 2 for k in ("x", "y", "width", "height"))  # 1024 → 512
    mask = np.asarray(Image.open(tmp_path / "rsna" / "masks" / f"rsna_{first['patientId'].replace('-', '_')}.png")) > 0
    assert mask[int(y + h / 2), int(x + w / 2)] and not mask[int(y) - 3, int(x) - 3]
    assert any(abs(b[0] - x) < 0.6 and abs(b[3] - (y + h)) < 0.6 for b in boxes[f"rsna_{first['patientId'].replace('-', '_')}"])


def test_vindr_synthetic_csv_on_real_dicoms(rsna_dir, tmp_path):
    dicoms = sorted(rsna_dir.glob("*.dcm"))[:3]
    folder = tmp_path / "vindr_train"
    folder.mkdir()
    ids = [f"img{i:03d}" for i in range(3)]
    for image_id, dicom in zip(ids, dicoms):
        shutil.copy(dicom, folder / f"{image_id}.dicom")
    rows = [  # two radiologists box a consolidation on img000, one an effusion (not opacity) on img001; img002 no finding
        {"image_id": ids[0], "class_name": "Consolidation", "class_id": 4, "rad_id": "R1", "x_min": 100, "y_min": 200, "x_max": 300, "y_max": 500},
        {"image_id": ids[0], "class_name": "Lung Opacity", "class_id": 7, "rad_id": "R2", "x_min": 600, "y_min": 300, "x_max": 800, "y_max": 600},
        {"image_id": ids[1], "class_name": "Pleural effusion", "class_id": 10, "rad_id": "R1", "x_min": 100, "y_min": 700, "x_max": 300, "y_max": 900},
        {"image_id": ids[2], "class_name": "No finding", "class_id": 14, "rad_id": "R3", "x_min": "", "y_min": "", "x_max": "", "y_max": ""},
    ]
    with open(tmp_path / "annotations_train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    convert.main(["vindr", str(folder), str(tmp_path / "annotations_train.csv"), str(tmp_path / "out"), "--max-side", "256"])
    records = {r.id: r for r in read_common_layout(tmp_path / "out")}
    assert [records[f"vindr_{i}"].label for i in ids] == [1, 0, 0]
    mask = np.asarray(Image.open(records["vindr_img000"].mask)) > 0
    assert mask.shape == (256, 256) and mask[87, 50] and mask[112, 175] and not mask[10, 10]
    assert len(convert.read_boxes(tmp_path / "out")["vindr_img000"]) == 2


def test_nnunet_raw_export(cqe_subset, tmp_path):
    write_common_layout(assign_splits(read_covid_qu_ex(cqe_subset)), tmp_path / "common")
    convert.main(["nnunet-raw", str(tmp_path / "common"), str(tmp_path / "raw"), "--dataset-id", "990", "--name", "Test", "--size", "64",
                  "--splits", "train", "val", "calib"])
    folder = tmp_path / "raw" / "Dataset990_Test"
    dataset = json.loads((folder / "dataset.json").read_text())
    images, labels = sorted((folder / "imagesTr").glob("*.png")), sorted((folder / "labelsTr").glob("*.png"))
    assert dataset["labels"] == {"background": 0, "opacity": 1} and dataset["file_ending"] == ".png"
    assert dataset["numTraining"] == len(images) == len(labels) == 12  # Non-COVID (label -1) left out
    assert all(p.name.endswith("_0000.png") for p in images)
    label = np.asarray(Image.open(labels[0]))
    assert label.shape == (64, 64) and set(np.unique(label)) <= {0, 1}


@pytest.mark.parametrize("cover", [0.9, 0.05])
def test_pseudo_label_refinement_rule(cover):
    from training.pseudo_labels import refine_with_boxes

    prob = np.zeros((100, 100), np.float32)
    box = (20.0, 30.0, 60.0, 70.0)  # x0, y0, x1, y1: 40×40
    side = int(round(40 * np.sqrt(cover)))
    prob[30:30 + side, 20:20 + side] = 0.9
    prob[80:90, 80:90] = 0.9  # outside every box: dropped
    mask = refine_with_boxes(prob, [box])
    assert not mask[80:90, 80:90].any()
    if cover >= 0.2:
        assert mask.sum() == side * side
    else:  # stage one missed it: the inscribed ellipse
        assert abs(mask.sum() - np.pi * 20 * 20) < 60 and mask[50, 40]
