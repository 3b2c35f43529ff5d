"""PNG preview: size, heat-map colours, mask outline, atomic save."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from operators.lib.atomic_file import write_png_atomically
from operators.lib.preview import CONTOUR_RGB, HEAT_THRESHOLD, colour_ramp, render_preview


def scene(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey gradient; prob 1 in a square in the left half, 0 elsewhere; mask = a box on the right."""
    image = np.tile(np.linspace(0.1, 0.9, cols, dtype=np.float32), (rows, 1))
    prob = np.zeros((rows, cols), np.float32)
    prob[rows // 4 : rows // 2, cols // 8 : cols // 3] = 1.0
    mask = np.zeros((rows, cols), bool)
    mask[rows // 4 : 3 * rows // 4, cols // 2 : 7 * cols // 8] = True
    return image, prob, mask


def is_grey(pixel) -> bool:
    r, g, b = (int(v) for v in pixel)
    return r == g == b


def test_output_is_rgb_and_downsized_to_longest_side():
    image, prob, mask = scene(2000, 1500)
    out = render_preview(image, prob, mask, max_side_px=1024)
    assert out.mode == "RGB"
    assert out.size == (768, 1024)  # (width, height)


def test_small_input_is_not_enlarged():
    image, prob, mask = scene(300, 200)
    assert render_preview(image, prob, mask, max_side_px=1024).size == (200, 300)


def test_heat_map_coloured_where_probability_high_and_grey_where_zero():
    image, prob, mask = scene(400, 400)
    out = np.asarray(render_preview(image, prob, mask))
    hot = out[150, 90]  # inside the prob = 1 square, far from the mask
    cold = out[350, 90]  # prob = 0, outside the mask
    assert not is_grey(hot)
    assert int(hot[0]) > int(hot[2])  # the ramp's top is warm (red/yellow over blue)
    assert is_grey(cold)
    assert cold[0] == round(image[350, 90] * 255)


def test_probability_below_threshold_stays_grey():
    image, _, mask = scene(200, 200)
    prob = np.full(image.shape, HEAT_THRESHOLD * 0.9, np.float32)
    out = np.asarray(render_preview(image, prob, np.zeros_like(mask)))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_mask_contour_drawn_on_the_edge_only():
    image, prob, mask = scene(400, 400)
    out = np.asarray(render_preview(image, prob, mask))
    contour = np.all(out == CONTOUR_RGB, axis=-1)
    assert contour[100, 200:350].all()  # top edge of the box
    assert contour[100:300, 200].all()  # left edge
    assert not contour[200, 275]  # inside the box
    assert not contour[20, 20]  # far outside
    assert contour.sum() < 0.05 * contour.size


def test_contour_survives_downsizing():
    image, prob, mask = scene(3000, 3000)
    out = np.asarray(render_preview(image, prob, mask, max_side_px=512))
    assert np.all(out == CONTOUR_RGB, axis=-1).any()


def test_empty_mask_and_zero_prob_give_plain_grey_with_title():
    image, _, _ = scene(256, 256)
    zeros = np.zeros_like(image)
    out = render_preview(image, zeros, zeros.astype(bool), title="NOT FOR CLINICAL USE")
    arr = np.asarray(out)
    assert (arr[200:, :, 0] == arr[200:, :, 2]).all()
    assert (arr[:10, :60] == 0).any()  # dark box behind the title


def test_colour_ramp_is_monotonic_in_lightness():
    rgb = colour_ramp(np.linspace(0, 1, 50))
    lightness = rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    assert rgb.shape == (50, 3)
    assert (np.diff(lightness) > 0).all()


def test_shape_mismatch_is_refused():
    image, prob, mask = scene(100, 100)
    with pytest.raises(ValueError):
        render_preview(image, prob[:-1], mask)


def test_write_png_atomically(tmp_path):
    image, prob, mask = scene(120, 100)
    img = render_preview(image, prob, mask)
    path = tmp_path / "preview.png"
    path.write_bytes(b"old")
    write_png_atomically(img, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]
    with Image.open(path) as reread:
        assert reread.format == "PNG"
        assert reread.size == img.size
        np.testing.assert_array_equal(np.asarray(reread.convert("RGB")), np.asarray(img))


def test_title_added_to_a_rendered_picture_equals_rendering_with_the_title():
    """The writer renders the SC heat map once and titles a copy for preview.png (sources ≤ 1024 px)."""
    from operators.lib.preview import with_title

    rng = np.random.default_rng(3)
    image, prob = rng.random((300, 260), dtype=np.float32), rng.random((300, 260), dtype=np.float32)
    mask = prob > 0.7
    untitled = render_preview(image, prob, mask, max_side_px=2048)
    titled = with_title(untitled, "0.61 positive · zones")
    assert np.array_equal(np.asarray(titled), np.asarray(render_preview(image, prob, mask, title="0.61 positive · zones")))
    assert not np.array_equal(np.asarray(titled), np.asarray(untitled))  # the title is drawn, on a copy
