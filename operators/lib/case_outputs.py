"""Every output of one processed image, written into a folder (the writer operator's staging folder).

| file | what |
|---|---|
| ``seg_probability.dcm`` | FRACTIONAL / PROBABILITY SEG, the exact final map |
| ``seg_binary.dcm`` | BINARY SEG: 1 Opacity (map ≥ the preset's threshold), 2 Lung |
| ``seg_bands.dcm`` | BINARY SEG: the map in probability bands, what OHIF shows as a heat map |
| ``sc_heatmap.dcm`` | Secondary Capture, heat map burned in, NOT FOR DIAGNOSTIC USE |
| ``sr_opacity.dcm`` | TID 1500 SR: the score and decision on the lungs, one group per opacity region |
| ``preview.png`` | the radiograph with the heat map and the mask contour |
| ``result.json`` | scores, gate, blend, boxes, models, timings, warnings, the files above |

All DICOM objects take their UIDs from the case id (:mod:`operators.lib.uids`), so the same image
processed again gives the same objects.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from operators.lib.atomic_file import write_dicom_atomically, write_json_atomically, write_png_atomically
from operators.lib.case_report import failed_report, processed_report
from operators.lib.preview import render_preview, with_title
from operators.lib.results import FinalResult, StepFailure
from operators.lib.sc_output import SC_MAX_SIDE_PX, build_heatmap_secondary_capture
from operators.lib.seg_output import AlgorithmInfo, build_band_seg, build_binary_seg, build_probability_seg
from operators.lib.sr_output import build_opacity_sr, lung_box, opacity_regions

PROBABILITY_SEG = "seg_probability.dcm"
BINARY_SEG = "seg_binary.dcm"
BAND_SEG = "seg_bands.dcm"
SC_HEATMAP = "sc_heatmap.dcm"
SR_OPACITY = "sr_opacity.dcm"
PREVIEW = "preview.png"
RESULT = "result.json"
#: every file of a processed image's folder, in the order result.json lists them
PROCESSED_FILES = (PROBABILITY_SEG, BINARY_SEG, BAND_SEG, SC_HEATMAP, SR_OPACITY, PREVIEW, RESULT)
#: longest side of preview.png
PREVIEW_MAX_SIDE_PX = 1024


def caption(mean_score: float, positive: bool, threshold: float, preset: str) -> str:
    """The line the heat-map SC carries (burned in and in its DerivationDescription)."""
    return f"opacity score {mean_score:.2f} ({'positive' if positive else 'negative'}, threshold {threshold:.2f}), preset {preset}"


def write_processed(folder: Path, final: FinalResult, algorithm: AlgorithmInfo, models: dict[str, Any], published_as: Path,
                    computed_at: datetime | None = None) -> list[str]:
    """Write one processed image's outputs into ``folder``; return their paths as they will be once
    ``folder`` is published as ``published_as``. ``computed_at`` (when the writer received the result)
    goes into result.json."""
    started = time.perf_counter()
    case, gate = final.case, final.gate
    key = case.case_id
    write_dicom_atomically(build_probability_seg(case.dataset, final.prob_map, algorithm, source_key=key), folder / PROBABILITY_SEG)
    binary_seg = build_binary_seg(case.dataset, final.opacity_mask, final.lung.mask, algorithm, source_key=key)
    write_dicom_atomically(binary_seg, folder / BINARY_SEG)
    write_dicom_atomically(build_band_seg(case.dataset, final.prob_map, algorithm, source_key=key), folder / BAND_SEG)
    line = caption(gate.mean_score, gate.positive, gate.threshold, algorithm.preset)
    heatmap_image = render_preview(case.pixels, final.prob_map, final.opacity_mask, max_side_px=SC_MAX_SIDE_PX)
    title = f"{gate.mean_score:.2f} {'positive' if gate.positive else 'negative'} · {algorithm.preset}"
    if max(heatmap_image.size) <= PREVIEW_MAX_SIDE_PX:  # the same picture: render once, add the title
        preview = with_title(heatmap_image, title)
    else:
        preview = render_preview(case.pixels, final.prob_map, final.opacity_mask, max_side_px=PREVIEW_MAX_SIDE_PX, title=title)
    write_png_atomically(preview, folder / PREVIEW)
    sc = build_heatmap_secondary_capture(case.dataset, np.asarray(heatmap_image), algorithm, caption=line, source_key=key)
    write_dicom_atomically(sc, folder / SC_HEATMAP)
    sr = build_opacity_sr(case.dataset, binary_seg, gate.mean_score, gate.positive, gate.threshold, algorithm,
                          lungs=lung_box(final.lung.mask), regions=opacity_regions(final.opacity_mask, final.lung.mask, final.prob_map),
                          source_key=key)
    write_dicom_atomically(sr, folder / SR_OPACITY)
    outputs = [str(Path(published_as) / name) for name in PROCESSED_FILES]
    write_json_atomically(processed_report(final, algorithm.preset, models, outputs, time.perf_counter() - started, computed_at),
                          folder / RESULT)
    return outputs


def write_failed(folder: Path, failure: StepFailure, algorithm: AlgorithmInfo, models: dict[str, Any], published_as: Path) -> list[str]:
    """Write a failed image's ``result.json`` (the reason) into ``folder``."""
    write_json_atomically(failed_report(failure, algorithm.preset, models), folder / RESULT)
    return [str(Path(published_as) / RESULT)]
