"""Train the ConvNeXt-FPN expert (:mod:`operators.nets.convnext_fpn`) on histogram-equalised input.

    python -m training.train_convnext_fpn --data DATA [DATA …] --out models/convnext_fpn_256 \
        --run-dir /work/train_runs/convnext_fpn_256 [--clip-checkpoint open_clip_convnext.bin]

``DATA``: common-layout folders (from :mod:`training.convert`: QaTa-COV19, Mendeley, RSNA boxes
filled to masks …) or a COVID-QU-Ex folder. Training uses every image with a real mask (positives
and clean negatives, label 0 with an empty mask); images with label -1 (e.g. COVID-QU-Ex
"Non-COVID": opacities present but not outlined) are left out, since an empty mask would teach the
model that pneumonia is background. Input: the app's own :meth:`ConvNextFpnSegmenter.prepare` —
resize to S×S, histogram equalisation, three channels, CLIP mean/std — with random affine
augmentation applied after equalisation. With ``--clip-checkpoint`` the trunk starts from an
open_clip ConvNeXt CLIP checkpoint's ``visual.trunk.*`` (the trunk config must match it, e.g.
``--trunk convnext_base --dims ''``). Output: ``config.json`` + ``model.safetensors`` (fp16).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from operators.lib.preprocessing import equalize_histogram
from operators.nets.convnext_fpn import ConvNextFpn, ConvNextFpnConfig, load_clip_trunk_weights
from operators.lib.segmenters import load_safetensors_into
from app.model_formats import write_safetensors_folder
from training.common import Augment, autocast, batches, bce_dice_loss, device_description, load_best, optimizer_step, run_loop, setup_run, write_training_summary
from training.data import load_arrays, records_from, split_table
from training.metrics import opacity_summary

logger = logging.getLogger("training.convnext_fpn")


def equalized_batch(images_u8: np.ndarray, config: ConvNextFpnConfig) -> np.ndarray:
    """N×S×S uint8 → N×S×S float32 in [0, 1]: the app's equalisation (or plain /255 when off)."""
    images = images_u8.astype(np.float32) / 255.0
    if not config.histogram_equalized:
        return images
    return np.stack([equalize_histogram(image) for image in images])


def normalize(batch: torch.Tensor, config: ConvNextFpnConfig) -> torch.Tensor:
    """B×1×S×S in [0, 1] → B×3×S×S normalised: the tail of :meth:`ConvNextFpnSegmenter.prepare`."""
    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch.repeat(1, 3, 1, 1) - mean) / std


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=336)
    parser.add_argument("--trunk", default="convnext_atto")
    parser.add_argument("--dims", default="24,48,96,192", help="trunk widths (comma list; '' = the trunk's own)")
    parser.add_argument("--depths", default="2,2,4,2", help="blocks per stage (comma list; '' = the trunk's own)")
    parser.add_argument("--fpn-channels", type=int, default=32)
    parser.add_argument("--clip-checkpoint", type=Path, default=None, help="open_clip ConvNeXt checkpoint for the trunk")
    parser.add_argument("--init", type=Path, default=None, help="start from this app-format model folder's weights (same config)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    parser.add_argument("--no-hist-eq", action="store_true", help="train without histogram equalisation (not the write-up's recipe)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-images", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    run_dir = setup_run(args.run_dir, args.threads)
    device = torch.device(args.device)
    records = [r for data in args.data for r in records_from(data) if r.label >= 0 and (r.has_mask or r.label == 0)]
    train_records = [r for r in records if r.split == "train"]
    val_records = [r for r in records if r.split == "val"]
    if args.max_images:
        train_records, val_records = train_records[: args.max_images], val_records[:: max(1, len(val_records) // args.max_images)][: args.max_images]
    trunk_kwargs = {}
    if args.dims:
        trunk_kwargs["dims"] = [int(v) for v in args.dims.split(",")]
    if args.depths:
        trunk_kwargs["depths"] = [int(v) for v in args.depths.split(",")]
    config = ConvNextFpnConfig(trunk=args.trunk, trunk_kwargs=trunk_kwargs, fpn_channels=args.fpn_channels, input_size_px=args.size,
                               histogram_equalized=not args.no_hist_eq)
    cache = run_dir.parent / "_cache"
    train = load_arrays(train_records, args.size, cache)
    val = load_arrays(val_records, args.size, cache)
    train_eq, val_eq = equalized_batch(train.images, config), equalized_batch(val.images, config)
    logger.info("convnext-fpn: %d train / %d val images at %d px on %s", len(train), len(val), args.size, device_description(device))

    model = ConvNextFpn(config)
    if args.clip_checkpoint:
        missing = load_clip_trunk_weights(model, args.clip_checkpoint)
        logger.info("trunk initialised from %s (%d trunk keys not in the checkpoint)", args.clip_checkpoint, len(missing))
    if args.init:
        load_safetensors_into(model, args.init / "model.safetensors")
        logger.info("initialised from %s", args.init)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    augment = Augment()
    rng = np.random.RandomState(0)

    def train_epoch(epoch: int) -> float:
        losses = []
        for index in batches(len(train), args.batch_size, True, rng):
            x, y = augment(torch.from_numpy(train_eq[index])[:, None], torch.from_numpy(train.masks[index].astype(np.float32))[:, None])
            with autocast(device, args.bf16):
                logits = model(normalize(x, config).to(device))
            loss = bce_dice_loss(logits.float(), (y > 0.5).float().to(device))
            losses.append(optimizer_step(optimizer, loss, clip_params=model.parameters()))
        return float(np.mean(losses))

    def validate() -> dict:
        probs = []
        for index in batches(len(val), 16, False):
            x = normalize(torch.from_numpy(val_eq[index])[:, None], config).to(device)
            probs += list(torch.sigmoid(model(x))[:, 0].float().cpu().numpy())
        metrics = opacity_summary(probs, list(val.masks), val.labels)
        metrics["val_select"] = 0.5 * metrics["val_dice_pos"] + 0.5 * (metrics["val_auc"] if np.isfinite(metrics["val_auc"]) else 0.0)
        return metrics

    state = run_loop(run_dir, model, optimizer, args.epochs, args.lr, train_epoch, validate, "val_select", vars(args))
    load_best(model, run_dir)
    write_safetensors_folder(args.out, model.cpu(), config.to_dict(), fp16=True)
    summary = write_training_summary(run_dir, state, {
        "model": "convnext-fpn", "device": device_description(device), "split": split_table(train_records + val_records),
        "init": (f"open_clip checkpoint {args.clip_checkpoint}" if args.clip_checkpoint else
                 f"weights of {args.init}" if args.init else "random (no CLIP checkpoint available here)"),
        "command": "python -m training.train_convnext_fpn " + shlex.join(str(a) for a in (argv if argv is not None else sys.argv[1:])),
    })
    logger.info("convnext-fpn: wrote %s (best epoch %d)", args.out, state.best_epoch)
    return summary


if __name__ == "__main__":
    main()
