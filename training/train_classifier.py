"""Train torchxrayvision's DenseNet-121 on the image-level opacity label; save it as xrv's own weights file.

    python -m training.train_classifier --data DATA --out models/xrv_densenet121_opacity \
        --run-dir /work/train_runs/xrv_densenet121_opacity [--epochs 3 --low-res 128 --low-res-epochs 2]

Production uses xrv's public ``densenet121-res224-all`` weights. This recipe trains the same
architecture (``xrv.models.DenseNet(num_classes=18)``, xrv's 18 targets) where only the
"Lung Opacity" output (index 16) is supervised — label 1 for images with opacity (COVID-19), 0 for
clean negatives (Normal); label -1 images (Non-COVID: opacity not known) are left out; the other 17
outputs are masked out of the loss and mean nothing. Input: the app's
:func:`operators.lib.preprocessing.xrv_input` (centre square, resize, [-1024, 1024]). To fit a CPU,
the first ``--low-res-epochs`` run at ``--low-res`` px (DenseNet ends in global pooling), the rest at
224 px on at most ``--max-full-res-images`` images. Validation is at 224 px, as in the app.

The model is written in the app's format for this architecture (``config.json`` with xrv's targets
and public ``op_threshs`` for ``densenet121-res224-all`` + ``model.safetensors``:
:func:`app.model_formats.write_xrv_densenet`). With those ``op_threshs`` (0.202 for Lung Opacity) the
output is ``op_norm(sigmoid(logit))``: 0.5 at a sigmoid of 0.202. The recipe therefore shifts the
Lung Opacity bias so that the threshold maximising Youden's J on the validation split lands at
0.202 — 0.5 is then this model's own operating point, as for the public weights. ``--fp16`` stores
the weights in half precision except BatchNorm statistics (the loader converts back to fp32).
``--init`` starts from an app-format classifier folder (``tools.convert_xrv_densenet`` converts xrv's
public pickled weights to it).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from operators.lib.preprocessing import xrv_input
from app.model_formats import write_xrv_densenet, xrv_densenet_config
from operators.lib.segmenters import import_xrv
from training.common import Augment, autocast, batches, device_description, load_best, optimizer_step, run_loop, setup_run, write_training_summary
from training.data import load_arrays, records_from, split_table
from training.metrics import best_threshold, roc_auc

logger = logging.getLogger("training.classifier")
OPACITY_INDEX = 16  # "Lung Opacity" in xrv's 18 targets
XRV_LUNG_OPACITY_THRESHOLD = 0.20204692  # xrv's op_threshs[16] for densenet121-res224-all


def xrv_batch(images_u8: np.ndarray, size: int) -> np.ndarray:
    """N×S×S uint8 → N×1×size×size float32 in xrv's range (the app's xrv_input per image)."""
    return np.concatenate([xrv_input(image.astype(np.float32) / 255.0, size) for image in images_u8])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--low-res", type=int, default=128)
    parser.add_argument("--low-res-epochs", type=int, default=2)
    parser.add_argument("--max-full-res-images", type=int, default=600)
    parser.add_argument("--max-val-images", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-images", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init", type=Path, default=None, help="start from this app-format classifier folder's weights")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    args = parser.parse_args(argv)

    xrv = import_xrv()
    run_dir = setup_run(args.run_dir, args.threads)
    device = torch.device(args.device)
    records = [r for data in args.data for r in records_from(data) if r.label >= 0]
    train_records = [r for r in records if r.split == "train"]
    val_records = [r for r in records if r.split == "val"]
    if args.max_images:
        train_records = train_records[:: max(1, len(train_records) // args.max_images)][: args.max_images]
        val_records = val_records[:: max(1, len(val_records) // args.max_images)][: args.max_images]
    if args.max_val_images and len(val_records) > args.max_val_images:
        val_records = val_records[:: math.ceil(len(val_records) / args.max_val_images)]
    cache = run_dir.parent / "_cache"
    train = load_arrays(train_records, 256, cache)
    val = load_arrays(val_records, 256, cache)
    val_x = torch.from_numpy(xrv_batch(val.images, 224))
    train_y = torch.from_numpy(train.labels.astype(np.float32))
    logger.info("classifier: %d train / %d val images on %s", len(train), len(val), device_description(device))

    model = xrv.models.DenseNet(num_classes=18)
    if args.init:
        state = {k: v for k, v in load_file(str(args.init / "model.safetensors")).items() if k != "op_threshs"}
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        logger.info("initialised from %s", args.init)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    augment = Augment(rotate_deg=8.0, hflip=0.0)
    rng = np.random.RandomState(0)
    low_cache: dict[int, np.ndarray] = {}

    def inputs_at(size: int) -> np.ndarray:
        if size not in low_cache:
            low_cache[size] = xrv_batch(train.images, size)
        return low_cache[size]

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        features = F.adaptive_avg_pool2d(F.relu(model.features(x)), (1, 1)).flatten(1)
        return model.classifier(features)[:, OPACITY_INDEX]

    def train_epoch(epoch: int) -> float:
        low = epoch < args.low_res_epochs
        size = args.low_res if low else 224
        x_all = inputs_at(size)
        index_all = np.arange(len(train))
        if not low and args.max_full_res_images and len(index_all) > args.max_full_res_images:
            index_all = rng.choice(index_all, args.max_full_res_images, replace=False)
        losses = []
        for chunk in batches(len(index_all), args.batch_size, True, rng):
            index = index_all[chunk]
            x = torch.from_numpy(x_all[index])
            x, _ = augment(x, torch.zeros_like(x))
            with autocast(device, args.bf16):
                logits = logits_of(x.to(device))
            loss = F.binary_cross_entropy_with_logits(logits.float(), train_y[index].to(device))
            losses.append(optimizer_step(optimizer, loss))
        return float(np.mean(losses))

    def validate() -> dict:
        scores = []
        for index in batches(len(val), 16, False):
            scores += torch.sigmoid(logits_of(val_x[index].to(device))).cpu().tolist()
        return {"val_auc": roc_auc(scores, val.labels == 1), "val_threshold": best_threshold(scores, val.labels == 1)}

    state = run_loop(run_dir, model, optimizer, args.epochs, args.lr, train_epoch, validate, "val_auc", vars(args))
    saved = load_best(model, run_dir)
    threshold = float(np.clip(saved["metrics"]["val_threshold"], 1e-4, 1 - 1e-4))
    shift = math.log(XRV_LUNG_OPACITY_THRESHOLD / (1 - XRV_LUNG_OPACITY_THRESHOLD)) - math.log(threshold / (1 - threshold))
    with torch.no_grad():
        model.classifier.bias[OPACITY_INDEX] += shift
    model = model.cpu().eval()
    config = xrv_densenet_config()
    model.op_threshs = torch.tensor(config["op_threshs"], dtype=torch.float32)  # a buffer: travels in the state dict
    write_xrv_densenet(args.out, model, config, fp16=args.fp16)
    summary = write_training_summary(run_dir, state, {
        "model": "xrv-densenet121", "device": device_description(device), "split": split_table(train_records + val_records),
        "operating_point": {"youden_threshold_on_val": threshold, "bias_shift": shift, "maps_to_xrv_op_thresh": XRV_LUNG_OPACITY_THRESHOLD},
        "init": str(args.init) if args.init else "random",
        "command": "python -m training.train_classifier " + shlex.join(str(a) for a in (argv if argv is not None else sys.argv[1:])),
    })
    logger.info("classifier: wrote %s (best epoch %d, val AUC %.4f)", args.out, state.best_epoch, state.best_metric)
    return summary


if __name__ == "__main__":
    main()
