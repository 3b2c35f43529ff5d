"""Shared preprocessing and the CLI's configuration resolution."""

from __future__ import annotations

import numpy as np
import pytest

from app.cli import build_parser, configured_preset
from operators.lib.preprocessing import center_crop_box, equalize_histogram, paste_center_square, resize, xrv_input


def test_histogram_equalisation_spreads_a_narrow_range_to_unit_range():
    image = np.linspace(0.40, 0.45, 256 * 64, dtype=np.float32).reshape(256, 64)
    out = equalize_histogram(image)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(np.diff(out.ravel()) >= 0)  # monotone mapping of a monotone ramp


def test_histogram_equalisation_of_a_constant_image_is_zero():
    assert equalize_histogram(np.full((8, 8), 0.3, np.float32)).max() == 0.0


def test_resize_there_and_back_keeps_a_smooth_image():
    y, x = np.mgrid[0:200, 0:300].astype(np.float32)
    image = (np.sin(x / 40) * np.cos(y / 30) + 1) / 2
    back = resize(resize(image, (100, 150)), (200, 300))
    assert np.abs(back - image).mean() < 0.01


def test_xrv_input_is_a_centre_crop_in_xrv_range():
    image = np.zeros((100, 60), np.float32)
    image[20:80, :] = 1.0  # the centre 60×60 square is all ones
    x = xrv_input(image, 32)
    assert x.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(x, 1024.0, rtol=1e-4)
    assert center_crop_box((100, 60)) == (20, 0, 60, 60)
    back = paste_center_square(np.ones((32, 32), np.float32), (100, 60))
    assert back[20:80].min() == pytest.approx(1.0) and back[:20].max() == 0.0


def test_preset_resolution_env_over_app_yaml(tmp_path, monkeypatch):
    config = tmp_path / "app.yaml"
    config.write_text("cxr_opacity:\n  preset: zones-low\n")
    monkeypatch.delenv("CXR_OPACITY_PRESET", raising=False)
    assert configured_preset(config) == "zones-low"
    monkeypatch.setenv("CXR_OPACITY_PRESET", "weighted")
    assert configured_preset(config) == "weighted"


def test_cli_rejects_a_bad_device():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--device", "tpu"])
    assert build_parser().parse_args(["--device", "cuda:1"]).device == "cuda:1"
