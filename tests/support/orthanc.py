"""A throw-away Orthanc (the Debian package) for the tests: own temp config, free ports, loopback peers only.

Orthanc 1.10 (Debian 12) has no option to choose the address it binds to, so the configuration
admits loopback peers only instead: HTTP refuses remote clients (RemoteAccessAllowed false), and the
DICOM server answers only the modalities listed here, all on 127.0.0.1, and only when called by its
own AE title (DicomCheckCalledAet, DicomCheckModalityHost, no "always allow" echo/store).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where the orthanc-dicomweb package puts its plugin (STOW-RS / QIDO-RS); optional.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


def find_orthanc() -> str | None:
    """The Orthanc executable (Debian puts it in /usr/sbin, not always on PATH)."""
    return shutil.which("Orthanc") or next((str(p) for p in (Path("/usr/sbin/Orthanc"), Path("/usr/bin/Orthanc")) if p.is_file()), None)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: REST on ``http://127.0.0.1:http_port``, DICOM on ``dicom_port`` as ORTHANC."""

    folder: Path
    modalities: dict[str, tuple[str, int]]
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def has_dicomweb(self) -> bool:
        return DICOMWEB_PLUGIN.is_file()

    def config(self) -> dict[str, Any]:
        return {
            "Name": "cxr-opacity-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AE_TITLE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {name: {"AET": aet, "Host": "127.0.0.1", "Port": port, "AllowEcho": True, "AllowStore": True}
                                for name, (aet, port) in self.modalities.items()},
            "DicomScuTimeout": 60,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.has_dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
            "DicomThreadsCount": 2,
        }

    def start(self, executable: str, timeout: float = 30.0) -> None:
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([executable, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within {timeout:.0f}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(self, method: str, path: str, body: bytes | dict | list | None = None, timeout: float = 120.0) -> bytes:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post(self, path: str, body: bytes | dict | list) -> Any:
        return json.loads(self.request("POST", path, body) or b"null")

    def upload(self, path: Path) -> dict[str, Any]:
        return self.post("/instances", path.read_bytes())

    def find_series(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """Series of a study (by StudyInstanceUID), expanded, optionally of one modality."""
        query = {"StudyInstanceUID": study_uid, **({"Modality": modality} if modality else {})}
        return self.post("/tools/find", {"Level": "Series", "Query": query, "Expand": True})

    def instance_file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")
