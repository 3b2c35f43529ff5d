"""Run ``python -m app`` in a subprocess exactly as a user does, and read what it left.

:func:`start_app` returns an :class:`AppProcess` whose resident memory (the app and its children,
from ``/proc``) is sampled in a background thread, so a test can watch memory and the output folder
while the app works; :func:`run_app` waits for it. :func:`check_result_folder` is the completeness
check every published result folder must pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: files every processed image's folder has (the writer may add more: it lists them all in result.json)
RESULT_FILES = frozenset({"seg_probability.dcm", "seg_binary.dcm", "preview.png", "result.json"})


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
    samples: list[tuple[float, int, int]] = field(default_factory=list)
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

    def records(self, outcome: str) -> list[dict]:
        """summary.json's file records with this outcome."""
        return [r for r in self.summary["files"] if r["outcome"] == outcome]


def io_args(input_folder: Path, output: Path, models: Path, *extra: str) -> list[str]:
    """``-i IN -o OUT -m MODELS`` plus ``extra``."""
    return ["-i", str(input_folder), "-o", str(output), "-m", str(models), *extra]


def start_app(args: list[str], output: Path, *, prefix: tuple[str, ...] = (), sample_every_s: float = 0.25,
              env: dict[str, str] | None = None, cwd: Path | None = None, max_file_bytes: int | None = None) -> AppProcess:
    """Start ``python -m app ARGS`` with holoscan's stack size (``bash`` execs python, so the child's
    pid is the app's), optionally behind ``prefix`` (setpriv, prlimit), and sample its memory.

    ``max_file_bytes``: RLIMIT_FSIZE for the app, so a write past it fails with EFBIG (Python
    ignores SIGXFSZ) — a per-file "disk full".
    """
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")

    def limit() -> None:
        if max_file_bytes is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    command = [*prefix, "bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" -m app "$@"', sys.executable, *args]
    proc = subprocess.Popen(command, cwd=cwd or REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit if max_file_bytes is not None else None)
    handle = AppProcess(proc, Path(output), time.monotonic())
    handle._sampler = threading.Thread(target=handle._sample, args=(sample_every_s,), daemon=True)
    handle._sampler.start()
    return handle


def run_app(args: list[str], output: Path, *, timeout: float = 600, **kwargs) -> AppProcess:
    """:func:`start_app`, then wait for it (at most ``timeout`` seconds)."""
    handle = start_app(args, output, **kwargs)
    handle.wait(timeout)
    return handle


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
