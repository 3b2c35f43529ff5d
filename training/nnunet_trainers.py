"""nnU-Net v2 trainer subclasses used by the recipes (training only).

* :class:`nnUNetTrainerShort` — the stock trainer with a configurable, short schedule (iterations
  per epoch, validation iterations, epochs from environment variables), a checkpoint every epoch
  (``checkpoint_latest.pth``, so a run resumes where it stopped) and no end-of-training sliding
  window validation (the project's own ``training.evaluate`` does that with the app's code).
  Two throughput options, also from the environment: ``CXR_NNUNET_BF16=1`` runs the network's
  forward (and so its backward) under bf16 autocast on the CPU too (nnU-Net enables mixed precision
  only on CUDA; the loss stays fp32, weights and optimizer state stay fp32), and
  ``CXR_NNUNET_LOWRES_EPOCHS=N`` + ``CXR_NNUNET_LOWRES_PATCH=P`` train the first N epochs on random
  P×P patches of the images (a quarter of the pixels at half the size, the same scale) before
  switching to the plans' full patch. Neither changes the network or the exported plans.
* :class:`nnUNetTrainerShortHistEq` — the same, plus the write-up's "randomly applied histogram
  equalisation" for the 336 nnU-Net: with probability ``CXR_NNUNET_HISTEQ_P`` (default 0.5) a
  training sample is replaced by its histogram-equalised version (the app's
  :func:`operators.lib.preprocessing.equalize_histogram`, on the min–max scaled sample), re-normalised
  to zero mean / unit variance as nnU-Net's ZScoreNormalization would have left it.

Neither changes the network: both build exactly the stock architecture from the plans, so the
exported checkpoints carry ``trainer_name = "nnUNetTrainer"`` (see :func:`training.nnunet.export_model_folder`)
and the app's ``nnUNetPredictor`` loads them without this module.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from operators.lib.preprocessing import equalize_histogram


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class nnUNetTrainerShort(nnUNetTrainer):  # noqa: N801 (nnU-Net naming)
    """Stock nnU-Net training, short schedule, checkpoint every epoch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = _env_int("CXR_NNUNET_ITERATIONS", 50)
        self.num_val_iterations_per_epoch = _env_int("CXR_NNUNET_VAL_ITERATIONS", 10)
        self.num_epochs = _env_int("CXR_NNUNET_EPOCHS", 20)
        self.initial_lr = float(os.environ.get("CXR_NNUNET_LR", 1e-2))
        self.save_every = 1
        self.bf16 = os.environ.get("CXR_NNUNET_BF16", "0") == "1"
        self.lowres_epochs = _env_int("CXR_NNUNET_LOWRES_EPOCHS", 0)
        self.lowres_patch = _env_int("CXR_NNUNET_LOWRES_PATCH", 0)
        self.full_patch = list(self.configuration_manager.patch_size)  # a copy of the plans' value (never written back)

    def _training_patch(self) -> list[int]:
        """The plans' patch, or the low-resolution one during the first ``lowres_epochs`` epochs."""
        if self.lowres_patch and self.current_epoch < self.lowres_epochs:
            return [min(self.lowres_patch, p) for p in self.full_patch]
        return list(self.full_patch)

    def get_dataloaders(self):
        # the configuration manager holds a deep copy of the plans' configuration: changing its patch
        # here changes what the loaders crop, not the plans.json that the export writes
        self.configuration_manager.configuration["patch_size"] = self._training_patch()
        self.print_to_log_file(f"training patch size {self.configuration_manager.patch_size}")
        return super().get_dataloaders()

    def on_epoch_start(self):
        if self.dataloader_train is not None and list(self.configuration_manager.patch_size) != self._training_patch():
            self.dataloader_train, self.dataloader_val = self.get_dataloaders()  # low-res stage over: full patches
        super().on_epoch_start()

    def _autocast(self):
        if self.bf16 and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batch: dict) -> dict:
        if not (self.bf16 and self.device.type == "cpu"):
            return super().train_step(batch)
        data, target = batch["data"].to(self.device), batch["target"]
        target = [t.to(self.device) for t in target] if isinstance(target, list) else target.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data)
        output = [o.float() for o in output] if isinstance(output, (list, tuple)) else output.float()
        loss = self.loss(output, target)  # fp32
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def on_epoch_end(self):
        super().on_epoch_end()  # increments current_epoch
        if self.current_epoch < self.num_epochs:  # the last epoch is saved as checkpoint_final by on_train_end
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))

    def save_checkpoint(self, filename: str) -> None:
        # on_epoch_end's own periodic save runs before the epoch counter moves; ours after: keep ours
        if filename.endswith("checkpoint_latest.pth"):
            self.current_epoch -= 1
            try:
                super().save_checkpoint(filename)
            finally:
                self.current_epoch += 1
        else:
            super().save_checkpoint(filename)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Sliding-window validation skipped (use python -m training.evaluate).")


class HistEqTransform(BasicTransform):
    """Histogram-equalise the image channels of one sample, then z-score them again."""

    def apply(self, data_dict, **params):
        image = data_dict["image"]
        out = torch.empty_like(image)
        for channel in range(image.shape[0]):
            array = image[channel].float().cpu().numpy()
            lo, hi = float(array.min()), float(array.max())
            scaled = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
            equalized = equalize_histogram(scaled)  # any shape: a global look-up table
            equalized = (equalized - equalized.mean()) / max(float(equalized.std()), 1e-8)
            out[channel] = torch.from_numpy(equalized.astype(np.float32))
        data_dict["image"] = out
        return data_dict


class nnUNetTrainerShortHistEq(nnUNetTrainerShort):  # noqa: N801
    """:class:`nnUNetTrainerShort` with randomly applied histogram equalisation (training only)."""

    @staticmethod
    def get_training_transforms(*args, **kwargs):
        transforms = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        p = float(os.environ.get("CXR_NNUNET_HISTEQ_P", 0.5))
        histeq = RandomTransform(HistEqTransform(), apply_probability=p)
        return ComposeTransforms([histeq] + list(transforms.transforms))
