"""Train the light lung segmenter (:class:`operators.nets.unet.SmallUNet`) on COVID-QU-Ex lung masks.

    python -m training.train_lung --data "DATA" --out models/lung_unet_128 --run-dir /work/train_runs/lung_unet_128

``DATA``: a COVID-QU-Ex ``Infection Segmentation Data/Train`` folder (split on the fly, see
:mod:`training.data`) or a common-layout folder with ``lungs/``. Every class is used (lungs are
outlined in all of them). Input exactly as the app's ``UNetLungSegmenter``: the whole image resized
to S×S with ``operators.lib.preprocessing.resize``, values [0, 1]. Output: ``config.json`` +
``model.safetensors`` (fp16; the app's loader converts to fp32). Same command again = resume.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from operators.nets.unet import SmallUNet, UNetConfig
from app.model_formats import write_safetensors_folder
from training.common import Augment, batches, bce_dice_loss, device_description, dice_score, load_best, optimizer_step, run_loop, setup_run, write_training_summary
from training.data import load_arrays, records_from, split_table

logger = logging.getLogger("training.lung")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (app format)")
    parser.add_argument("--run-dir", type=Path, required=True, help="checkpoints and logs (outside git)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-images", type=int, default=0, help="use at most N train / N val images (tests)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    run_dir = setup_run(args.run_dir, args.threads)
    device = torch.device(args.device)
    records = [r for r in records_from(args.data) if r.lungs is not None]
    train_records = [r for r in records if r.split == "train"]
    val_records = [r for r in records if r.split == "val"]
    if args.max_images:
        train_records, val_records = train_records[: args.max_images], val_records[: args.max_images]
    cache = run_dir.parent / "_cache"
    train = load_arrays(train_records, args.size, cache)
    val = load_arrays(val_records, args.size, cache)
    logger.info("lung: %d train / %d val images at %d px on %s", len(train), len(val), args.size, device_description(device))

    config = UNetConfig(base_channels=args.base_channels, depth=args.depth, out_channels=1, input_size_px=args.size)
    model = SmallUNet(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    augment = Augment(gamma=(0.7, 1.4), contrast=0.15)
    rng = np.random.RandomState(0)

    def to_tensor(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]

    def train_epoch(epoch: int) -> float:
        losses = []
        for index in batches(len(train), args.batch_size, True, rng):
            x, y = augment(to_tensor(train.images[index]), torch.from_numpy(train.lungs[index].astype(np.float32))[:, None])
            loss = bce_dice_loss(model(x.to(device)), (y > 0.5).float().to(device))
            losses.append(optimizer_step(optimizer, loss))
        return float(np.mean(losses))

    def validate() -> dict:
        dices = []
        for index in batches(len(val), 32, False):
            prob = torch.sigmoid(model(to_tensor(val.images[index]).to(device)))[:, 0].cpu().numpy()
            dices += [dice_score(p >= 0.5, t) for p, t in zip(prob, val.lungs[index])]
        return {"val_dice": float(np.mean(dices))}

    state = run_loop(run_dir, model, optimizer, args.epochs, args.lr, train_epoch, validate, "val_dice", vars(args))
    load_best(model, run_dir)
    write_safetensors_folder(args.out, model.cpu(), config.to_dict(), fp16=True)
    summary = write_training_summary(run_dir, state, {
        "model": "lung", "device": device_description(device), "split": split_table(train_records + val_records),
        "command": "python -m training.train_lung " + shlex.join(str(a) for a in (argv if argv is not None else sys.argv[1:])),
    })
    logger.info("lung: wrote %s (best epoch %d, val Dice %.4f)", args.out, state.best_epoch, state.best_metric)
    return summary


if __name__ == "__main__":
    main()
