"""Image preprocessing shared by the app and the training recipes (written down once, here).

All functions take and return float32 arrays; images are H×W in [0, 1] (MONOCHROME2 sense).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Number of grey levels used by :func:`equalize_histogram`.
HIST_EQ_BINS = 256


def resize(image: np.ndarray, size_hw: tuple[int, int], *, antialias: bool = True) -> np.ndarray:
    """Bilinear resize of an H×W (or C×H×W) float array to ``size_hw``.

    Downsizing uses antialiasing (torch's ``antialias=True``); ``align_corners=False`` throughout,
    so a resize there and back keeps the image centred.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.shape[-2:] == tuple(size_hw):
        return array.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    squeeze = tensor.ndim == 2
    tensor = tensor[None, None] if squeeze else tensor[None]
    out = F.interpolate(tensor, size=tuple(size_hw), mode="bilinear", align_corners=False, antialias=antialias)
    out = out[0, 0] if squeeze else out[0]
    return out.numpy()


def equalize_histogram(image: np.ndarray, bins: int = HIST_EQ_BINS) -> np.ndarray:
    """Global histogram equalisation of a [0, 1] image to [0, 1].

    Quantise to ``bins`` levels, map each level to its cumulative frequency normalised so the
    darkest occupied level maps to 0 and the brightest to 1. Deterministic and the same for
    training (ConvNeXt-FPN input, the nnU-Net 336 augmentation) and inference.
    """
    array = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    levels = np.minimum((array * bins).astype(np.int64), bins - 1)
    counts = np.bincount(levels.ravel(), minlength=bins).astype(np.float64)
    cdf = np.cumsum(counts)
    first = cdf[np.nonzero(counts)[0][0]]
    span = cdf[-1] - first
    if span <= 0:
        return np.zeros_like(array)
    lut = np.clip((cdf - first) / span, 0.0, 1.0).astype(np.float32)
    return lut[levels]


def center_crop_box(shape_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest centred square inside an H×W image."""
    rows, cols = shape_hw
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    return top, left, side, side


def to_xrv_range(image: np.ndarray) -> np.ndarray:
    """Map a [0, 1] image to torchxrayvision's input range [-1024, 1024]."""
    return (np.asarray(image, dtype=np.float32) * 2048.0 - 1024.0).astype(np.float32)


def xrv_input(image: np.ndarray, size_px: int) -> np.ndarray:
    """torchxrayvision input: centre square crop, resize to ``size_px``, range [-1024, 1024].

    Returns 1×1×S×S float32 (batch, channel, H, W), what xrv's DenseNet and PSPNet expect.
    """
    top, left, side, _ = center_crop_box(image.shape)
    square = image[top : top + side, left : left + side]
    return to_xrv_range(resize(square, (size_px, size_px)))[None, None]


def paste_center_square(square_map: np.ndarray, shape_hw: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """Inverse of the centre crop: resize an S×S map to the crop and place it in an H×W canvas."""
    top, left, side, _ = center_crop_box(shape_hw)
    canvas = np.full(shape_hw, fill, dtype=np.float32)
    canvas[top : top + side, left : left + side] = resize(square_map, (side, side))
    return canvas
