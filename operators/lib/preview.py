"""PNG preview of a result: the radiograph in grey, the opacity probability as a heat map, the mask
outline on top.

Everything is drawn at the output size: the inputs are first reduced (area averaging) so the longest
side is at most ``max_side_px``, then blended, then the mask contour is traced on the reduced mask,
so the outline stays visible however much the image was shrunk.
"""

from __future__ import annotations


import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage


#: Probabilities at or below this are not coloured.
HEAT_THRESHOLD = 0.05
#: Opacity of the heat map at probability 1 (linear from 0 at the threshold).
HEAT_MAX_ALPHA = 0.6
#: Part of the colour ramp used: ``inferno`` from 0.15 up, so low probabilities are purple, not
#: black (black would read as "darker lung" on a radiograph).
RAMP_START = 0.15
#: Colour of the mask outline (cyan, absent from the ramp).
CONTOUR_RGB = (0, 255, 255)

#: matplotlib's ``inferno`` (perceptually uniform, monotonic lightness) sampled at 0, 0.1, ..., 1,
#: interpolated linearly in sRGB.
_INFERNO_ANCHORS = np.array(
    [
        (0, 0, 4),
        (22, 11, 57),
        (66, 10, 104),
        (106, 23, 110),
        (147, 38, 103),
        (188, 55, 84),
        (221, 81, 58),
        (243, 120, 25),
        (252, 165, 10),
        (246, 215, 70),
        (252, 255, 164),
    ],
    dtype=np.float32,
) / 255.0


def _ramp_lut(entries: int = 1024) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS), dtype=np.float32)
    grid = np.linspace(0.0, 1.0, entries, dtype=np.float32)
    return np.stack([np.interp(grid, positions, _INFERNO_ANCHORS[:, c]) for c in range(3)], axis=-1).astype(np.float32)


_RAMP_LUT = _ramp_lut()


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB with the inferno ramp.

    Parameters
    ----------
    values : numpy.ndarray
        Any shape; clipped to [0, 1].

    Returns
    -------
    numpy.ndarray
        float32, shape ``values.shape + (3,)``, in [0, 1].
    """
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    # a 1024-entry lookup table: one interpolation per entry, then indexing (fast on big images)
    return _RAMP_LUT[np.rint(v * (len(_RAMP_LUT) - 1)).astype(np.intp)]


def _output_size(shape: tuple[int, int], max_side_px: int) -> tuple[int, int]:
    """(width, height) with the longest side ≤ max_side_px, never enlarged."""
    height, width = shape
    scale = min(1.0, max_side_px / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float H×W array to (width, height) by area averaging."""
    if (array.shape[1], array.shape[0]) == size:
        return array.astype(np.float32, copy=False)
    resized = Image.fromarray(array.astype(np.float32)).resize(
        size, resample=Image.Resampling.BOX
    )
    return np.asarray(resized, dtype=np.float32)


def render_preview(
    image: np.ndarray,
    prob_map: np.ndarray,
    mask: np.ndarray,
    *,
    max_side_px: int = 1024,
    title: str | None = None,
) -> Image.Image:
    """Render the radiograph with the probability heat map and the mask outline.

    Parameters
    ----------
    image : numpy.ndarray
        H×W radiograph, values in [0, 1] (0 = black); clipped, NaN shown as black.
    prob_map : numpy.ndarray
        H×W probabilities in [0, 1]; coloured where > ``HEAT_THRESHOLD``.
    mask : numpy.ndarray
        H×W bool mask; its outline (mask XOR eroded mask) is drawn in ``CONTOUR_RGB``.
    max_side_px : int, optional
        Longest side of the result; smaller inputs are not enlarged.
    title : str or None, optional
        Text drawn top-left on a dark box.

    Returns
    -------
    PIL.Image.Image
        RGB image.

    Raises
    ------
    ValueError
        When the arrays are not 2D of one shape, or ``max_side_px`` < 1.
    """
    image = np.asarray(image)
    prob_map = np.asarray(prob_map)
    mask = np.asarray(mask)
    if image.ndim != 2 or prob_map.shape != image.shape or mask.shape != image.shape:
        raise ValueError(
            f"image, prob_map and mask must be 2D of one shape, got {image.shape}, "
            f"{prob_map.shape}, {mask.shape}"
        )
    if max_side_px < 1:
        raise ValueError(f"max_side_px must be >= 1, got {max_side_px}")

    size = _output_size(image.shape, max_side_px)
    grey = np.clip(_resize(np.nan_to_num(image.astype(np.float32), nan=0.0), size), 0.0, 1.0)
    prob = np.clip(_resize(np.nan_to_num(prob_map.astype(np.float32), nan=0.0), size), 0.0, 1.0)
    small_mask = _resize(mask.astype(np.float32), size) >= 0.5

    # grey everywhere, rounded once per pixel (not per channel); the heat-map pixels are blended in
    # float and rounded the same way: the picture of blending every channel of a float RGB image
    out = np.repeat(np.round(grey * 255.0).astype(np.uint8)[..., np.newaxis], 3, axis=-1)
    heat = prob > HEAT_THRESHOLD
    if np.any(heat):
        p = prob[heat]
        alpha = (HEAT_MAX_ALPHA * (p - HEAT_THRESHOLD) / (1.0 - HEAT_THRESHOLD))[:, np.newaxis]
        colours = colour_ramp(RAMP_START + (1.0 - RAMP_START) * p)
        out[heat] = np.round(((1.0 - alpha) * grey[heat][:, np.newaxis] + alpha * colours) * 255.0).astype(np.uint8)
    if np.any(small_mask):
        thickness = max(1, round(max(size) / 512))
        eroded = ndimage.binary_erosion(small_mask, iterations=thickness, border_value=0)
        out[small_mask ^ eroded] = CONTOUR_RGB

    result = Image.fromarray(out)
    return with_title(result, title) if title else result


def with_title(img: Image.Image, title: str) -> Image.Image:
    """A copy of ``img`` with ``title`` drawn top-left on a dark box (what ``render_preview(title=…)`` draws)."""
    result = img.copy()
    draw = ImageDraw.Draw(result)
    left, top, right, bottom = draw.textbbox((4, 4), title)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((4, 4), title, fill=(255, 255, 255))
    return result
