"""Our nnU-Net wrapper: stock nnU-Net maps, weights loaded once, and the app's thread count kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.lib.segmenters import NnUNetSegmenter
from tools.random_model_pack import build_random_pack


@pytest.fixture(scope="module")
def nnunet_folder(tmp_path_factory):
    pack = build_random_pack(tmp_path_factory.mktemp("nnunet_pack") / "pack")
    return pack / "nnunet_2d_336"


def _stock_predictor(folder):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    return predictor


def _threads_seen_by_network(network: torch.nn.Module, run) -> list[int]:
    seen: list[int] = []
    handle = network.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_same_map_as_stock_predictor_and_weights_not_reloaded(nnunet_folder):
    segmenter = NnUNetSegmenter("n", nnunet_folder, torch.device("cpu"), 336)
    square = np.random.default_rng(1).random((336, 336), dtype=np.float32)
    data = (square * 255.0)[None, None]
    _, stock = _stock_predictor(nnunet_folder).predict_single_npy_array(data, {"spacing": [999.0, 1.0, 1.0]}, None, None, True)
    reloads = []
    network = segmenter.predictor.network
    original = network.load_state_dict
    network.load_state_dict = lambda *a, **k: reloads.append(1) or original(*a, **k)
    ours = segmenter.predict_square(square)
    assert np.abs(ours - stock[1, 0]).max() == 0.0
    assert reloads == [], "the fold's weights were reloaded for a prediction"


def test_predicts_with_the_apps_thread_count_not_nnunets_cap(nnunet_folder, monkeypatch):
    import nnunetv2.inference.predict_from_raw_data as nnunet_predict

    monkeypatch.setattr(nnunet_predict, "default_num_processes", 1)  # as with nnUNet_def_n_proc=1
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        segmenter = NnUNetSegmenter("n", nnunet_folder, torch.device("cpu"), 336)
        square = np.zeros((336, 336), np.float32)
        ours = _threads_seen_by_network(segmenter.predictor.network, lambda: segmenter.predict_square(square))
        stock_predictor = _stock_predictor(nnunet_folder)
        stock = _threads_seen_by_network(stock_predictor.network, lambda: stock_predictor.predict_single_npy_array(
            (square * 255)[None, None], {"spacing": [999.0, 1.0, 1.0]}, None, None, True))
    finally:
        torch.set_num_threads(previous)
    assert ours == [2]
    assert stock == [1]  # what the stock predictor would have done: the cap this wrapper avoids


def test_sliding_window_gaussian_computed_once_per_patch_size(nnunet_folder):
    """The app's three nnU-Nets (three patch sizes, in turn) each reuse their Gaussian: nnU-Net's own
    two-entry cache recomputed it on every call (scipy, about 0.15 s for a 768-px patch)."""
    from nnunetv2.inference import predict_from_raw_data

    pack = nnunet_folder.parent
    segmenters = [NnUNetSegmenter(name, pack / name, torch.device("cpu"), size)
                  for name, size in (("nnunet_2d_336", 336), ("nnunet_2d_768", 768), ("nnunet_refine_256", 256))]
    patch_sizes = {tuple(s.predictor.configuration_manager.patch_size) for s in segmenters}
    assert len(patch_sizes) == 3, patch_sizes
    gaussian = predict_from_raw_data.compute_gaussian
    for segmenter in segmenters:  # first round: at most one miss per patch size
        segmenter.predict_square(np.zeros((segmenter.input_size_px,) * 2, np.float32))
    misses = gaussian.cache_info().misses
    for _ in range(2):
        for segmenter in segmenters:
            segmenter.predict_square(np.zeros((segmenter.input_size_px,) * 2, np.float32))
    assert gaussian.cache_info().misses == misses, "a Gaussian was recomputed for a patch size already seen"
    assert gaussian.cache_info().hits >= 6
