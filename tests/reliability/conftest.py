"""Reliability fixtures: the generated bad-input folder, one app run over it, and a monitored app runner.

The app runs in a subprocess exactly as a user runs it (``python -m app``); :func:`start_app`
returns a handle whose resident memory (the app and its children, from ``/proc``) is sampled in a
background thread, so a test can watch memory and the output folder while the app works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability import cases

REPO = Path(__file__).resolve().parents[2]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"


def _rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and all its descendants (0 once gone)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    stack.extend(int(child) for child in handle.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue
    return total


@dataclass
class AppProcess:
    """A running (or finished) ``python -m app`` with RSS samples (seconds since start, bytes, results so far)."""

    proc: subprocess.Popen
    output: Path
    started: float
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, RSS bytes, results published)
    stdout: str = ""
    stderr: str = ""
    _sampler: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self, interval: float) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            rss = _rss_bytes(self.proc.pid)
            if rss:
                self.samples.append((time.monotonic() - self.started, rss, self.results_published()))
            self._stop.wait(interval)

    def wait(self, timeout: float) -> int:
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        finally:
            self._stop.set()
            if self._sampler is not None:
                self._sampler.join(timeout=5)
        return self.proc.returncode

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def results_published(self) -> int:
        """Result folders visible in the output folder now."""
        try:
            return sum(1 for e in os.scandir(self.output) if e.is_dir() and not e.name.startswith("."))
        except OSError:
            return 0

    @property
    def peak_rss(self) -> int:
        return max((rss for _, rss, _ in self.samples), default=0)

    @property
    def summary(self) -> dict:
        return json.loads((self.output / "summary.json").read_text())


def app_command(input_folder: Path, output: Path, models: Path, *extra: str, prefix: tuple[str, ...] = ()) -> list[str]:
    """The command line a user runs (with holoscan's stack size), optionally behind ``prefix`` (setpriv, prlimit)."""
    return [*prefix, "bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" -m app "$@"', sys.executable,
            "-i", str(input_folder), "-o", str(output), "-m", str(models), *extra]


def start_app(input_folder: Path, output: Path, models: Path, *extra: str, prefix: tuple[str, ...] = (),
              sample_every_s: float = 0.25, env: dict[str, str] | None = None, max_file_bytes: int | None = None) -> AppProcess:
    """Start the app (``bash`` execs python, so the child's pid is the app's) and sample its memory.

    ``max_file_bytes``: RLIMIT_FSIZE for the app, so a write past it fails with EFBIG (Python
    ignores SIGXFSZ) — a per-file "disk full".
    """
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")

    def limit() -> None:
        if max_file_bytes is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    proc = subprocess.Popen(app_command(input_folder, output, models, *extra, prefix=prefix), cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit if max_file_bytes is not None else None)
    handle = AppProcess(proc, output, time.monotonic())
    handle._sampler = threading.Thread(target=handle._sample, args=(sample_every_s,), daemon=True)
    handle._sampler.start()
    return handle


def run_app(input_folder: Path, output: Path, models: Path, *extra: str, timeout: float = 600, **kwargs) -> AppProcess:
    handle = start_app(input_folder, output, models, *extra, **kwargs)
    handle.wait(timeout)
    return handle


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    if not SHARED_DICOM.is_dir():
        pytest.skip("shared/data/dicom is not beside the checkout")
    return SHARED_DICOM


#: nnU-Net patch size of the reliability pack: small, so that 200 studies fit in CI's time
FAST_NNUNET_PX = 128


def build_fast_pack(out: Path) -> Path:
    """The random model pack of tools/random_model_pack.py (real on-disk formats, same model names), with
    its three nnU-Nets re-made at 128 px: the app's per-image time drops from ~2.4 s to ~0.6 s on two
    cores. What these tests check (input handling, accounting, faults, memory growth) does not depend
    on the networks' input sizes."""
    from app.model_store import Architecture
    from tools.random_model_pack import _card, build_random_pack, nnunet_2d_plans, nnunet_dataset_json, write_nnunet_folder

    build_random_pack(out)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, card in manifest["models"].items():
        if card["architecture"] != Architecture.NNUNET_2D.value:
            continue
        shutil.rmtree(out / name)
        folder = write_nnunet_folder(out / name, nnunet_2d_plans(f"Dataset9{FAST_NNUNET_PX}_Random", FAST_NNUNET_PX, (4, 8, 16)),
                                     nnunet_dataset_json())
        manifest["models"][name] = _card(folder, card["role"], Architecture.NNUNET_2D, FAST_NNUNET_PX, 0,
                                         options=card["options"], calibration=card.get("calibration", {}))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def model_pack(tmp_path_factory) -> Path:
    """A complete random model pack in the real on-disk formats, nnU-Nets at 128 px (see build_fast_pack)."""
    return build_fast_pack(tmp_path_factory.mktemp("reliability_models") / "pack")


@pytest.fixture(scope="session")
def bad_input(tmp_path_factory, dicom_dir) -> tuple[Path, list[cases.Case]]:
    """Every generated case in one folder (sub-folders included)."""
    folder = tmp_path_factory.mktemp("bad_input")
    return folder, cases.write_cases(folder, dicom_dir)


@pytest.fixture(scope="session")
def bad_input_run(tmp_path_factory, bad_input, model_pack) -> AppProcess:
    """ONE app run over the whole bad-input folder; every test of test_bad_input.py reads its results."""
    folder, _ = bad_input
    output = tmp_path_factory.mktemp("bad_input_output")
    return run_app(folder, output, model_pack, timeout=900)


#: files every processed image's folder has (the writer may add more: it lists them all in result.json)
RESULT_FILES = frozenset({"seg_probability.dcm", "seg_binary.dcm", "preview.png", "result.json"})


def check_result_folder(folder: Path) -> None:
    """A published result folder is complete — exactly the files its result.json lists, at least
    RESULT_FILES — and every file in it reads back whole."""
    import numpy as np
    import pydicom
    from PIL import Image

    report = json.loads((folder / "result.json").read_text())
    assert report["status"] == "processed", folder
    listed = {Path(p).name for p in report["outputs"]}
    present = {p.name for p in folder.iterdir()}
    assert present == listed and RESULT_FILES <= present, f"{folder}: {sorted(present)} (listed: {sorted(listed)})"
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if "PixelData" in ds:
            assert np.asarray(ds.pixel_array).size > 0  # the whole pixel data decodes: not truncated
    with Image.open(folder / "preview.png") as image:
        image.load()


def hidden_entries(folder: Path) -> list[str]:
    """Names starting with '.' anywhere under ``folder`` (staging folders, temporary files)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))
