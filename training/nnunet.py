"""nnU-Net v2 recipes: raw export, plans + preprocessing, training (resumable), model-folder export.

One command does every step that is not done yet, so running it again resumes::

    python -m training.nnunet --data DATA [DATA …] --work /work/train_runs/nnunet_256 --dataset-id 501 \
        --name CxrOpacity256 --size 256 --features 8,16,32,64,128 --trainer histeq --epochs 20 \
        --out models/nnunet_2d_256_histeq

Steps (each skipped when its output exists):

1. **raw export** (:func:`export_raw`): every image with a real mask (and clean negatives with an empty
   one; label -1 images are left out) resized to ``--size``² exactly as the app squashes an image,
   written as ``WORK/nnUNet_raw/DatasetNNN_NAME/imagesTr/<id>_0000.png`` and ``labelsTr/<id>.png``
   (0/1) with ``dataset.json`` (labels background / opacity, ``.png``, NaturalImage2DIO).
2. **plans + preprocessing**: instead of ``nnUNetv2_plan_and_preprocess``'s planner (whose 2D plan at
   256² has 33.5 M parameters, hours per epoch on a CPU), the plans are written with the app's
   :func:`app.model_formats.nnunet_2d_plans` (patch = image = ``--size``, spacing 1, z-score,
   ``--features`` per stage) and nnU-Net's own ``DefaultPreprocessor`` runs on them. ``splits_final.json``
   makes fold 0 = our train / val split.
3. **training**: nnU-Net's trainer (:mod:`training.nnunet_trainers`: ``short`` = stock augmentation,
   ``histeq`` = plus randomly applied histogram equalisation), ``--epochs`` × ``--iterations``, a
   checkpoint every epoch; re-running continues from ``checkpoint_latest.pth``. ``--init`` starts from
   another nnU-Net model folder's weights (stage two of the 768 recipe).
4. **export** (:func:`export_model_folder`): ``dataset.json``, ``plans.json``,
   ``fold_0/checkpoint_final.pth`` — nnU-Net's own trained-model folder — with ``trainer_name`` set to
   the stock ``nnUNetTrainer`` (same architecture; the app's predictor finds it without this repo's
   trainers) and, with ``--fp16``, the network weights stored as fp16 (nnU-Net's ``load_state_dict``
   copies them into its fp32 network).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from operators.lib.preprocessing import resize
from app.model_formats import nnunet_2d_plans, nnunet_dataset_json
from training.common import setup_run
from training.data import Record, read_grey, read_mask, records_from, split_table, write_png

logger = logging.getLogger("training.nnunet")

TRAINERS = {"short": "nnUNetTrainerShort", "histeq": "nnUNetTrainerShortHistEq"}
PLANS = "nnUNetPlans"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def squash_u8(image_u8: np.ndarray, size: int) -> np.ndarray:
    """The app's squash of an 8-bit image to size×size (``operators.lib.preprocessing.resize`` on [0, 1])."""
    return np.clip(np.round(resize(image_u8.astype(np.float32) / 255.0, (size, size)) * 255.0), 0, 255).astype(np.uint8)


def squash_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return resize(mask.astype(np.float32), (size, size)) >= 0.5


def export_raw(records: list[Record], raw_root: Path, dataset_id: int, name: str, size: int) -> Path:
    """Write nnU-Net's raw format (imagesTr/<id>_0000.png, labelsTr/<id>.png with 0/1, dataset.json)."""
    folder = Path(raw_root) / dataset_folder_name(dataset_id, name)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for record in records:
        image = read_grey(record.image)
        mask = read_mask(record.mask, image.shape)
        write_png(folder / "imagesTr" / f"{record.id}_0000.png", squash_u8(image, size))
        write_png(folder / "labelsTr" / f"{record.id}.png", squash_mask(mask, size).astype(np.uint8))
    dataset = nnunet_dataset_json(len(records))
    dataset["name"] = name
    dataset["description"] = f"{len(records)} images squashed to {size}x{size}; written by training.nnunet"
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def set_nnunet_env(work: Path) -> dict[str, Path]:
    paths = {"nnUNet_raw": work / "nnUNet_raw", "nnUNet_preprocessed": work / "nnUNet_preprocessed", "nnUNet_results": work / "nnUNet_results"}
    for key, value in paths.items():
        value.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(value)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # augmentation in the training process: one core
    return paths


def plan_and_preprocess(paths: dict[str, Path], dataset_id: int, name: str, size: int, features: tuple[int, ...], batch_size: int,
                        splits: dict[str, list[str]]) -> Path:
    """Write plans (the app's plan writer) and run nnU-Net's DefaultPreprocessor with one process."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset

    dataset_name = dataset_folder_name(dataset_id, name)
    pre = paths["nnUNet_preprocessed"] / dataset_name
    pre.mkdir(parents=True, exist_ok=True)
    with open(pre / "fingerprint.log", "w") as log, contextlib.redirect_stdout(log):
        fingerprint = extract_fingerprint_dataset(dataset_id, num_processes=1, clean=True, verbose=False, show_progress_bar=False)
    shutil.copy(paths["nnUNet_raw"] / dataset_name / "dataset.json", pre / "dataset.json")
    plans = nnunet_2d_plans(dataset_name, size, features, batch_size)
    plans["foreground_intensity_properties_per_channel"] = fingerprint["foreground_intensity_properties_per_channel"]
    (pre / f"{PLANS}.json").write_text(json.dumps(plans, indent=2))
    (pre / "splits_final.json").write_text(json.dumps([{"train": splits["train"], "val": splits["val"]}], indent=1))
    with open(pre / "preprocess.log", "w") as log, contextlib.redirect_stdout(log):
        preprocess_dataset(dataset_id, PLANS, ("2d",), [1], verbose=False, show_progress_bar=False)
    (pre / "preprocessed.ok").write_text("done\n")
    return pre


def trainer_folder_of(paths: dict[str, Path], dataset_id: int, name: str, trainer_key: str) -> Path:
    """nnU-Net's results folder for this dataset, trainer and our plans (``…/<Trainer>__<plans>__2d``)."""
    from training import nnunet_trainers

    trainer_cls = getattr(nnunet_trainers, TRAINERS[trainer_key])
    return paths["nnUNet_results"] / dataset_folder_name(dataset_id, name) / f"{trainer_cls.__name__}__{PLANS}__2d"


def load_all_weights(network: torch.nn.Module, checkpoint: Path) -> None:
    """Every weight of an nnU-Net checkpoint (fp16 or fp32) into ``network``, strictly.

    nnU-Net's own ``load_pretrained_weights`` leaves out the segmentation heads (it is meant for a new
    task); continuing the same task (a longer run from committed weights, stage two) wants them too."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    target = network.module if hasattr(network, "module") else network
    target = getattr(target, "_orig_mod", target)
    target.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved.items()}, strict=True)


def train(paths: dict[str, Path], dataset_id: int, name: str, trainer_key: str, device: torch.device, init: Path | None = None) -> Path:
    """Run (or continue) nnU-Net training of fold 0; returns the trainer's output folder."""
    from training import nnunet_trainers

    dataset_name = dataset_folder_name(dataset_id, name)
    pre = paths["nnUNet_preprocessed"] / dataset_name
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer_cls = getattr(nnunet_trainers, TRAINERS[trainer_key])
    out = trainer_folder_of(paths, dataset_id, name, trainer_key) / "fold_0"
    final, latest = out / "checkpoint_final.pth", out / "checkpoint_latest.pth"
    if final.is_file():
        done = int(torch.load(final, map_location="cpu", weights_only=False)["current_epoch"])
        wanted = int(os.environ.get("CXR_NNUNET_EPOCHS", 0))
        if done >= wanted:
            logger.info("nnU-Net: %s already finished (%d epochs)", final, done)
            return out
        final.replace(latest)  # more epochs asked for: continue from the final checkpoint
        logger.info("nnU-Net: continuing %s from epoch %d to %d", out, done, wanted)
    plans["continue_training"] = latest.is_file()
    trainer = trainer_cls(plans=plans, configuration="2d", fold=0, dataset_json=dataset_json, device=device)
    assert Path(trainer.output_folder) == out, (trainer.output_folder, out)
    if latest.is_file():
        trainer.load_checkpoint(str(latest))
        logger.info("nnU-Net: resumed from %s at epoch %d", latest, trainer.current_epoch)
    elif init is not None:
        trainer.initialize()
        load_all_weights(trainer.network, init / "fold_0" / "checkpoint_final.pth")
        logger.info("nnU-Net: initialised from %s", init)
    trainer.run_training()
    return out


def checkpoint_of(trainer_folder: Path) -> Path:
    """checkpoint_final.pth, or checkpoint_latest.pth of a run stopped early (``--export-only``)."""
    final = Path(trainer_folder) / "fold_0" / "checkpoint_final.pth"
    return final if final.is_file() else Path(trainer_folder) / "fold_0" / "checkpoint_latest.pth"


def export_model_folder(trainer_folder: Path, out: Path, fp16: bool = True) -> Path:
    """Copy nnU-Net's trained-model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth) to ``out``,
    with ``trainer_name`` = ``nnUNetTrainer`` (same architecture) and optionally fp16 network weights."""
    trainer_folder, out = Path(trainer_folder), Path(out)
    (out / "fold_0").mkdir(parents=True, exist_ok=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copy(trainer_folder / name, out / name)
    checkpoint = torch.load(checkpoint_of(trainer_folder), map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"
    checkpoint["init_args"]["device"] = torch.device("cpu")
    if fp16:
        checkpoint["network_weights"] = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint["network_weights"].items()}
        checkpoint["optimizer_state"] = None  # inference-only file; the run folder keeps the resumable one
    torch.save(checkpoint, out / "fold_0" / "checkpoint_final.pth")
    return out


def training_log(trainer_folder: Path) -> dict:
    """Epochs, seconds and the last pseudo-Dice from nnU-Net's logger in the final checkpoint."""
    checkpoint = torch.load(checkpoint_of(trainer_folder), map_location="cpu", weights_only=False)
    log = checkpoint["logging"]
    starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
    seconds = float(sum(e - s for s, e in zip(starts, ends)))
    return {"epochs": int(checkpoint["current_epoch"]), "train_seconds": round(seconds),
            "last_pseudo_dice": float(log["mean_fg_dice"][-1]) if log.get("mean_fg_dice") else None,
            "last_train_loss": float(log["train_losses"][-1]) if log.get("train_losses") else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="common-layout folders or a COVID-QU-Ex folder")
    parser.add_argument("--work", type=Path, required=True, help="run folder: nnUNet_raw / _preprocessed / _results (outside git)")
    parser.add_argument("--dataset-id", type=int, required=True)
    parser.add_argument("--name", required=True, help="dataset name (letters/digits)")
    parser.add_argument("--size", type=int, default=336)
    parser.add_argument("--features", default="32,64,128,256,512", help="features per stage (one pooling per stage after the first)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--trainer", choices=sorted(TRAINERS), default="short")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--init", type=Path, default=None, help="nnU-Net model folder to start from (stage two)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (app format)")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-images", type=int, default=0, help="at most N train and N val images (tests)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU (nnU-Net uses fp16 autocast on CUDA anyway)")
    parser.add_argument("--lowres-epochs", type=int, default=0, help="the first N epochs on --lowres-patch patches")
    parser.add_argument("--lowres-patch", type=int, default=0, help="patch size (px) of the low-resolution epochs")
    parser.add_argument("--export-only", action="store_true", help="no training: export the final (or latest) checkpoint as it is")
    args = parser.parse_args(argv)

    work = setup_run(args.work, args.threads)
    paths = set_nnunet_env(work)
    os.environ["CXR_NNUNET_EPOCHS"] = str(args.epochs)
    os.environ["CXR_NNUNET_ITERATIONS"] = str(args.iterations)
    os.environ["CXR_NNUNET_VAL_ITERATIONS"] = str(args.val_iterations)
    os.environ["CXR_NNUNET_LR"] = str(args.lr)
    os.environ["CXR_NNUNET_BF16"] = "1" if args.bf16 else "0"
    os.environ["CXR_NNUNET_LOWRES_EPOCHS"] = str(args.lowres_epochs)
    os.environ["CXR_NNUNET_LOWRES_PATCH"] = str(args.lowres_patch)
    features = tuple(int(v) for v in args.features.split(","))
    records = [r for data in args.data for r in records_from(data) if r.label >= 0 and (r.has_mask or r.label == 0)]
    train_records = [r for r in records if r.split == "train"]
    val_records = [r for r in records if r.split == "val"]
    if args.max_images:
        train_records = train_records[:: max(1, len(train_records) // args.max_images)][: args.max_images]
        val_records = val_records[:: max(1, len(val_records) // args.max_images)][: args.max_images]
    dataset_name = dataset_folder_name(args.dataset_id, args.name)
    started = time.time()
    raw = paths["nnUNet_raw"] / dataset_name
    if not (raw / "dataset.json").is_file():
        export_raw(train_records + val_records, paths["nnUNet_raw"], args.dataset_id, args.name, args.size)
        logger.info("nnU-Net: raw export of %d images to %s (%.0fs)", len(train_records) + len(val_records), raw, time.time() - started)
    if not (paths["nnUNet_preprocessed"] / dataset_name / "preprocessed.ok").is_file():
        plan_and_preprocess(paths, args.dataset_id, args.name, args.size, features, args.batch_size,
                            {"train": [r.id for r in train_records], "val": [r.id for r in val_records]})
        logger.info("nnU-Net: plans + preprocessing done (%.0fs)", time.time() - started)
    device = torch.device(args.device)
    if args.export_only:
        trainer_folder = trainer_folder_of(paths, args.dataset_id, args.name, args.trainer)
    else:
        trainer_folder = train(paths, args.dataset_id, args.name, args.trainer, device, args.init).parent
    export_model_folder(trainer_folder, args.out, fp16=args.fp16)
    summary_path = work / "training_summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    command = "python -m training.nnunet " + shlex.join(str(a) for a in (argv if argv is not None else sys.argv[1:]))
    summary = {"model": f"nnunet-2d ({args.trainer})", "size": args.size, "features": list(features), "device": str(device),
               "split": split_table(train_records + val_records), **training_log(trainer_folder),
               "iterations_per_epoch": args.iterations, "batch_size": args.batch_size,
               # a continued run (more epochs, no --init) keeps where the first one started from, and every command
               "init": str(args.init) if args.init else previous.get("init", "random"),
               "command": command, "commands": continued_commands(previous, command)}
    summary_path.write_text(json.dumps(summary, indent=2))
    logger.info("nnU-Net: wrote %s", args.out)
    return summary


def continued_commands(previous: dict, command: str) -> list[str]:
    """The commands that made a run folder, oldest first: ``previous`` summary's, then ``command`` (once)."""
    commands = list(previous.get("commands") or ([previous["command"]] if previous.get("command") else []))
    return commands if commands and commands[-1] == command else [*commands, command]


if __name__ == "__main__":
    main()
