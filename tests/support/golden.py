"""The golden regression file: the committed reference pack's final map for the bundled example CR.

    python -m tests.support.golden        # (re)write tests/data/golden/example_zones.npz from models/

Run it (and commit the file) whenever the pack in ``models/`` changes on purpose; the test
(``tests/e2e/test_golden.py``) refuses a golden file made from other model files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden" / "example_zones.npz"
EXAMPLE = REPO / "examples" / "rsna_cr_00436515.dcm"


def run_example(models: Path, output: Path) -> tuple[np.ndarray, dict]:
    """Run ``python -m app`` on the bundled example (zones preset); return (stored FRACTIONAL SEG values, result.json)."""
    import pydicom

    folder = Path(tempfile.mkdtemp(prefix="golden_in_"))
    (folder / EXAMPLE.name).write_bytes(EXAMPLE.read_bytes())
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" -m app "$@"', sys.executable,
               "-i", str(folder), "-o", str(output), "-m", str(models), "--preset", "zones"]
    subprocess.run(command, check=True, capture_output=True, cwd=REPO, timeout=900)
    (case,) = [p for p in output.iterdir() if p.is_dir() and not p.name.startswith(".")]
    stored = pydicom.dcmread(case / "seg_probability.dcm").pixel_array.astype(np.uint8)
    return stored, json.loads((case / "result.json").read_text())


def main() -> None:
    from training.pipeline import models_key

    stored, result = run_example(REPO / "models", Path(tempfile.mkdtemp(prefix="golden_out_")))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN, stored=stored, mean_score=result["gate"]["mean_score"], decision=result["gate"]["decision"],
                        models_key=models_key(REPO / "models"))
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes): mean score {result['gate']['mean_score']:.4f}, {result['gate']['decision']}")


if __name__ == "__main__":
    main()
