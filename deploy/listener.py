"""DICOM listener: receive studies by C-STORE, run the app on each complete study, send the results on.

    python -m deploy.listener --models DIR --spool DIR --allow ROUTER_AE [--allow AE ...]
                              --destination PACS_AE@HOST:PORT [--stow-url URL]
                              [--ae-title CXR_OPACITY] [--bind 127.0.0.1] [--port 11112] [--allow-host NET ...]
                              [--idle-seconds 30] [--app-command TEMPLATE] [limits, see --help]
    python -m deploy.listener requeue --spool DIR [JOB ...]

It is the piece between a DICOM router (or a PACS "send to" node) and the app: a pynetdicom Storage
SCP that accepts associations only from the calling AE titles given with ``--allow`` and only when
called by its own AE title, and that binds to loopback unless ``--bind`` says otherwise. Every
received instance is written to the spool at once; a study is complete when none of its instances
has arrived for ``--idle-seconds``. The study is then moved, in one rename, to a job folder, the app
runs on it, and every DICOM file it wrote (SEGs, and whatever else the app writes as ``*.dcm``) is
sent by C-STORE to ``--destination`` and, with ``--stow-url``, by DICOMweb STOW-RS. The job folder,
received data included, is deleted only when every file was accepted; until then the job is retried
(delivery only, when the app already succeeded) with a growing delay, and after ``--max-attempts``
it is moved to ``failed/`` and kept for a person to look at.

Spool layout::

    incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm   instances as received (folder mtime = last arrival)
    jobs/<StudyInstanceUID>.<n>/input/                 a complete study
    jobs/<StudyInstanceUID>.<n>/output/                the app's output (summary.json, a folder per image)
    jobs/<StudyInstanceUID>.<n>/job.json               attempts, next try, last error
    failed/<StudyInstanceUID>.<n>/                     jobs given up
    logs/<StudyInstanceUID>.<n>.log                    the app's output for each job (kept)

Whether the app succeeded is read from ``output/summary.json`` (its ``exit_code``), not from the
process: a MAP run through its entrypoint exits 0 whatever the app returned. Exit code 3 (nothing in
the study could be processed, e.g. no frontal chest radiograph) is a success with nothing to send.
A restarted listener picks up where it stopped: the spool is its only state.

Limits, so that no peer can stall, fill or confuse it (each a flag, safe by default):

* peers: only the ``--allow-host`` addresses or networks (loopback by default) get a TCP connection at
  all, only the ``--allow`` AE titles an association; at most ``--max-associations`` at once; a
  connection that sends no association request within ``--acse-timeout`` seconds (and one idle on the
  network for ``--network-timeout``) is closed;
* data: received data sets go to a file on the spool's disk, not memory, and an association that sends
  more than ``--max-dataset-mb`` for one data set is aborted; the Deflated transfer syntax is not
  offered (a small deflated data set can inflate to gigabytes);
* disk: below ``--min-free-mb`` free on the spool's file system new connections are refused and
  C-STORE answers "Out of Resources" (0xA700), as Orthanc's MaximumStorageSize and the Informatics
  Gateway's reserved space do;
* crashes: a study becomes a job by writing (and fsyncing) ``job.json`` first, then renaming the study
  into the job, so after a crash at any instant the study is in exactly one place and is picked up
  again; a job whose ``job.json`` cannot be read is moved to ``failed/`` with the reason, never
  blocking the others;
* ``failed/``: ``python -m deploy.listener requeue --spool DIR [JOB ...]`` puts failed jobs back (all
  by default); ``status.json`` in the spool (rewritten every poll) counts incoming, pending and failed
  jobs with their last errors, for a monitor;
* privacy: spool files are 0600 and folders 0700 (patient data, readable by the listener's user only;
  run the app — or its container, ``--user``-mapped — as that same user).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from operators.lib.atomic_file import fsync_directory
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.sop_class import Verification

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
#: ``python -m app`` from this checkout; ``{input}``, ``{output}`` and ``{models}`` are filled in.
DEFAULT_APP_COMMAND = f"{shlex.quote(sys.executable)} -m app -i {{input}} -o {{output}} -m {{models}}"
#: App exit codes (summary.json) after which the job is delivered: processed something / nothing to do.
APP_DONE = {0: "processed", 3: "nothing to process"}
#: C-STORE statuses that mean "stored": success and the three warnings (coercion, elements discarded, ...).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
#: Status returned when an instance cannot be written to the spool (Refused: Out of Resources).
STATUS_OUT_OF_RESOURCES = 0xA700
#: Status returned for an instance without usable Study/SOP Instance UIDs (Error: Cannot understand).
STATUS_CANNOT_UNDERSTAND = 0xC000
#: Stack size the app wants (Holoscan); raised up to the hard limit before any app runs.
APP_STACK_BYTES = 32 * 1024 * 1024
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
#: Transfer syntaxes offered for C-STORE: all of pynetdicom's but Deflated (a few KB can inflate to GB).
ACCEPTED_TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts != pydicom.uid.DeflatedExplicitVRLittleEndian]
#: Where a job that cannot be read goes; what a monitor reads.
STATUS_FILE = "status.json"


def is_safe_uid(value: object) -> bool:
    """A UID usable as a file name: digits and dots only, at most 64 characters."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


@dataclass(frozen=True)
class Destination:
    """A DICOM node that receives the results by C-STORE: ``AE_TITLE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"([^@]{1,16})@([^:@]+):(\d{1,5})", text)
        if not match or not 0 < int(match.group(3)) < 65536:
            raise ValueError(f"Destination {text!r} is not AE_TITLE@HOST:PORT (AE title at most 16 characters).")
        return cls(match.group(1), match.group(2), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class ListenerConfig:
    """Everything the listener needs; see ``python -m deploy.listener --help``."""

    models: Path
    spool: Path
    allowed_calling_aets: tuple[str, ...]
    destination: Destination
    ae_title: str = "CXR_OPACITY"
    bind: str = "127.0.0.1"
    port: int = 11112
    stow_url: str | None = None
    idle_seconds: float = 30.0
    retry_seconds: float = 60.0
    max_attempts: int = 5
    app_command: str = DEFAULT_APP_COMMAND
    app_timeout_seconds: float = 3600.0
    poll_seconds: float = 1.0
    allowed_hosts: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    max_associations: int = 4
    acse_timeout: float = 10.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_dataset_bytes: int = 256 * 1024 * 1024
    min_free_bytes: int = 1024 * 1024 * 1024

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(h, strict=False) for h in self.allowed_hosts)

    def __post_init__(self) -> None:
        try:
            self.networks
        except ValueError as exc:
            raise ValueError(f"--allow-host: {exc}") from None
        if not self.allowed_hosts:
            raise ValueError("At least one peer address or network must be allowed (--allow-host).")
        for name in ("max_associations", "acse_timeout", "dimse_timeout", "network_timeout", "max_dataset_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}.")
        if not self.allowed_calling_aets:
            raise ValueError("At least one calling AE title must be allowed (--allow); the listener accepts no one else.")
        for title in (self.ae_title, *self.allowed_calling_aets):
            if not 0 < len(title) <= 16:
                raise ValueError(f"AE title {title!r} must have 1 to 16 characters.")
        missing = [part for part in ("{input}", "{output}") if part not in self.app_command]
        if missing:
            raise ValueError(f"--app-command must contain {' and '.join(missing)}; got {self.app_command!r}.")


@dataclass
class JobState:
    """``job.json``: a job's history, so that a restarted listener retries it the same way."""

    study: str
    attempts: int = 0
    next_try: float = 0.0
    last_error: str | None = None
    history: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> JobState:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        """Write, fsync, rename, fsync the folder: after a crash the file is the old one or the new one, whole."""
        _write_private(path, (json.dumps(self.__dict__, indent=2) + "\n").encode())


def _write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` as a 0600 file (patient data stays with its owner)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp creates 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


class Spool:
    """The listener's folders; received data lives here until its results are delivered."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.jobs = self.root / "jobs"
        self.failed = self.root / "failed"
        self.logs = self.root / "logs"
        self.receiving = self.root / "receiving"  # data sets being received (pynetdicom writes them here, not to memory)
        for folder in (self.root, self.incoming, self.jobs, self.failed, self.logs, self.receiving):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder.chmod(0o700)
        # One lock for "write an instance" and "move a complete study": never move a study mid-write.
        self._lock = threading.Lock()

    def store(self, encoded: bytes, study_uid: str, sop_uid: str) -> Path:
        """Write one received instance (a complete Part 10 file) as ``incoming/<study>/<sop>.dcm``."""
        with self._lock:
            folder = self.incoming / study_uid
            folder.mkdir(exist_ok=True, mode=0o700)
            target = folder / f"{sop_uid}.dcm"
            _write_private(target, encoded)
            return target

    def store_file(self, received: Path, study_uid: str, sop_uid: str) -> Path:
        """Move a received Part 10 file (written by pynetdicom into ``receiving/``) to
        ``incoming/<study>/<sop>.dcm``, 0600 and fsynced, without reading it into memory."""
        with self._lock:
            folder = self.incoming / study_uid
            folder.mkdir(exist_ok=True, mode=0o700)
            target = folder / f"{sop_uid}.dcm"
            os.chmod(received, 0o600)
            with open(received, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(received, target)
            fsync_directory(folder)
            return target

    def take_complete_studies(self, now: float, idle_seconds: float) -> list[Path]:
        """Turn every study idle for ``idle_seconds`` into a job; return the job folders.

        ``job.json`` is written and fsynced first, then the study is renamed into the job: a crash (or a
        full disk) before the rename leaves the study in ``incoming/`` and a job folder without input,
        which :meth:`recover` removes; after it, a complete job."""
        taken = []
        with self._lock:
            for folder in sorted(self.incoming.iterdir()):
                if not folder.is_dir() or now - folder.stat().st_mtime < idle_seconds:
                    continue
                job = self._new_job_folder(folder.name)
                try:
                    JobState(study=folder.name, history=[f"{_stamp(now)} received {_count_files(folder)} instances"]).save(job / "job.json")
                except OSError:
                    shutil.rmtree(job, ignore_errors=True)  # e.g. ENOSPC: the study stays where it is, for the next poll
                    raise
                os.replace(folder, job / "input")
                fsync_directory(self.jobs)
                taken.append(job)
        return taken

    def clean_receiving(self, now: float, older_than: float) -> list[str]:
        """Remove data sets left half-received in ``receiving/`` (an aborted or dropped association)
        that nothing has written to for ``older_than`` seconds."""
        removed = []
        for path in self.receiving.iterdir():
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed.append(path.name)
            except OSError:
                continue
        return removed

    def recover(self) -> list[str]:
        """Tidy what a crash between the two steps of :meth:`take_complete_studies` left: a job folder
        whose study never arrived is removed (the study is still in ``incoming/``)."""
        done = []
        with self._lock:
            for job in sorted(self.jobs.iterdir()):
                if job.is_dir() and not (job / "input").exists() and not (job / "output").exists():
                    shutil.rmtree(job, ignore_errors=True)
                    done.append(f"removed {job.name} (its study had not been moved in; it is still in incoming/)")
        return done

    def _new_job_folder(self, study_uid: str) -> Path:
        for n in range(1, 10_000):
            job = self.jobs / f"{study_uid}.{n}"
            if not job.exists() and not (self.failed / job.name).exists():
                job.mkdir(mode=0o700)
                return job
        raise RuntimeError(f"More than 9999 jobs for study {study_uid} in {self.jobs}.")

    def pending_jobs(self) -> list[Path]:
        return sorted(job for job in self.jobs.iterdir() if (job / "job.json").is_file())

    def quarantine(self, job: Path, reason: str) -> Path:
        """Move a job that cannot be worked on to ``failed/``, with ``QUARANTINED.txt`` saying why."""
        target = self.failed / job.name
        os.replace(job, target)
        _write_private(target / "QUARANTINED.txt", (reason + "\n").encode())
        return target

    def requeue(self, names: Sequence[str] = ()) -> list[str]:
        """Put failed jobs (all, or those named) back into ``jobs/`` with their attempts reset."""
        moved = []
        for job in sorted(self.failed.iterdir()):
            if names and job.name not in names or not job.is_dir():
                continue
            state_path = job / "job.json"
            try:
                state = JobState.load(state_path)
            except (OSError, ValueError, TypeError):
                state = JobState(study=job.name.rsplit(".", 1)[0])
            state.attempts, state.next_try, state.last_error = 0, 0.0, None
            state.history.append(f"{_stamp(time.time())} requeued by hand")
            state.save(state_path)
            (job / "QUARANTINED.txt").unlink(missing_ok=True)
            os.replace(job, self.jobs / job.name)
            moved.append(job.name)
        return moved

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def write_status(self, now: float) -> dict[str, Any]:
        """``status.json``: counts and the failed jobs' last errors, for a monitor."""
        def last_error(job: Path) -> str | None:
            try:
                return JobState.load(job / "job.json").last_error
            except (OSError, ValueError, TypeError):
                reason = job / "QUARANTINED.txt"
                return reason.read_text().strip() if reason.is_file() else "job.json unreadable"

        failed = sorted(p for p in self.failed.iterdir() if p.is_dir())
        status = {"time": _stamp(now), "incoming_studies": sum(1 for p in self.incoming.iterdir() if p.is_dir()),
                  "pending_jobs": len(self.pending_jobs()), "failed_jobs": len(failed),
                  "failed": {job.name: last_error(job) for job in failed[:100]},
                  "free_bytes": self.free_bytes()}
        _write_private(self.root / STATUS_FILE, (json.dumps(status, indent=2) + "\n").encode())
        return status


def _stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))


def _count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def result_files(output: Path) -> list[Path]:
    """Every DICOM file the app published under ``output`` (hidden staging folders and files excluded)."""
    return sorted(path for path in output.rglob("*.dcm")
                  if not any(part.startswith(".") for part in path.relative_to(output).parts))


def app_exit_code(output: Path) -> int | None:
    """The app's exit code from ``output/summary.json``; None when there is no readable summary."""
    try:
        return int(json.loads((output / "summary.json").read_text())["exit_code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def send_c_store(files: Sequence[Path], destination: Destination, calling_ae: str, timeout: float = 60.0) -> list[str]:
    """Send files by C-STORE on one association; return one message per file that was not stored."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts: dict[str, set[str]] = {}
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        contexts.setdefault(str(header.SOPClassUID), set()).add(str(header.file_meta.TransferSyntaxUID))
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes | {pydicom.uid.ExplicitVRLittleEndian}))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return [f"{destination}: association not established (rejected, aborted or unreachable)"]
    failures = []
    try:
        for path in files:
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code not in STORED_STATUSES:
                failures.append(f"{path.name}: C-STORE status {'none' if code is None else f'0x{code:04X}'}")
    finally:
        if assoc.is_established:
            assoc.release()
    return failures


def send_stow(files: Sequence[Path], url: str, timeout: float = 120.0) -> list[str]:
    """Send files in one DICOMweb STOW-RS request; return failure messages (empty when all were stored)."""
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n" for path in files]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        return [f"STOW-RS {url}: HTTP {exc.code} {exc.reason}"]
    except (urllib.error.URLError, OSError) as exc:
        return [f"STOW-RS {url}: {exc}"]
    failed = []
    try:
        failed = (json.loads(payload) or {}).get("00081198", {}).get("Value", []) if payload else []
    except ValueError:
        pass
    if status != 200 or failed:
        return [f"STOW-RS {url}: HTTP {status}, {len(failed)} instance(s) refused"]
    return []


class Listener:
    """The Storage SCP plus the loop that turns complete studies into delivered results."""

    def __init__(self, config: ListenerConfig):
        self.config = config
        self.spool = Spool(config.spool)
        self._server: Any = None
        self._received: dict[int, int] = {}  # bytes received per association since its last C-STORE

    # --- receiving -------------------------------------------------------------------------------
    def peer_allowed(self, address: str) -> str | None:
        """Why a TCP connection from ``address`` is refused, or None (allow-list, then the disk reserve)."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"unparseable peer address {address!r}"
        if not any(ip in network for network in self.config.networks):
            return f"peer {address} is not in --allow-host"
        free = self.spool.free_bytes()
        if free < self.config.min_free_bytes:
            return f"only {free // 2**20} MiB free on the spool's disk (reserve {self.config.min_free_bytes // 2**20} MiB)"
        return None

    def start(self) -> tuple[str, int]:
        """Start the Storage SCP in background threads; return the bound (address, port)."""
        _config.STORE_RECV_CHUNKED_DATASET = True  # data sets go to files in the spool, not to memory
        tempfile.tempdir = str(self.spool.receiving)  # where pynetdicom's chunked data sets are written
        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.require_called_aet = True
        ae.maximum_associations = self.config.max_associations
        ae.acse_timeout = self.config.acse_timeout
        ae.dimse_timeout = self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        listener = self

        class Server(ThreadedAssociationServer):
            def verify_request(self, request, client_address) -> bool:  # before any DICOM is read
                reason = listener.peer_allowed(str(client_address[0]))
                if reason:
                    logger.warning("Connection refused: %s", reason)
                return reason is None

        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_DATA_RECV, self._on_data)]
        self._server = Server(ae, (self.config.bind, self.config.port), self.config.ae_title, ae.supported_contexts, None,
                              evt_handlers=handlers)
        threading.Thread(target=self._server.serve_forever, name="dicom-scp", daemon=True).start()
        ae._servers.append(self._server)
        address = self._server.server_address[:2]
        logger.info("Listening as %s on %s:%d; accepting calling AE titles %s from %s; results to %s%s",
                    self.config.ae_title, address[0], address[1], ", ".join(self.config.allowed_calling_aets),
                    ", ".join(self.config.allowed_hosts), self.config.destination,
                    f" and {self.config.stow_url}" if self.config.stow_url else "")
        return address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _on_data(self, event: evt.Event) -> None:
        """Count what an association has sent since its last C-STORE; abort it past the size limit."""
        received = self._received.get(id(event.assoc), 0) + len(event.data)
        self._received[id(event.assoc)] = received
        if received > self.config.max_dataset_bytes:
            logger.warning("Association from %s aborted: more than %d MiB for one data set (--max-dataset-mb)",
                           event.assoc.requestor.address, self.config.max_dataset_bytes // 2**20)
            self._received.pop(id(event.assoc), None)
            event.assoc.abort()

    def _on_store(self, event: evt.Event) -> int:
        self._received.pop(id(event.assoc), None)  # the data set is complete: the next one counts from 0
        path = event.dataset_path
        try:
            if self.spool.free_bytes() < self.config.min_free_bytes:
                logger.error("C-STORE refused: the spool's disk is below its reserve")
                return STATUS_OUT_OF_RESOURCES
            try:
                dataset = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # undecodable data set: refuse it, keep serving
                logger.warning("C-STORE from %s: data set cannot be decoded (%s)", event.assoc.requestor.ae_title, exc)
                return STATUS_CANNOT_UNDERSTAND
            study, sop = dataset.get("StudyInstanceUID"), dataset.get("SOPInstanceUID")
            if not (is_safe_uid(study) and is_safe_uid(sop)):
                logger.warning("C-STORE from %s refused: StudyInstanceUID %r / SOPInstanceUID %r are not valid UIDs",
                               event.assoc.requestor.ae_title, study, sop)
                return STATUS_CANNOT_UNDERSTAND
            try:
                self.spool.store_file(path, study, sop)
            except OSError as exc:
                logger.error("Cannot write %s/%s to the spool: %s", study, sop, exc)
                return STATUS_OUT_OF_RESOURCES
            return 0x0000
        finally:
            Path(path).unlink(missing_ok=True)

    # --- processing ------------------------------------------------------------------------------
    def process_once(self, now: float | None = None) -> None:
        """Turn idle studies into jobs, then work on every job that is due."""
        now = time.time() if now is None else now
        for name in self.spool.clean_receiving(now, self.config.network_timeout + self.config.dimse_timeout):
            logger.warning("Removed %s: a data set whose association ended before it was complete", name)
        for job in self.spool.take_complete_studies(now, self.config.idle_seconds):
            logger.info("Study %s complete (%d instances) → %s", job.name.rsplit(".", 1)[0],
                        _count_files(job / "input"), job.name)
        for job in self.spool.pending_jobs():
            try:
                state = JobState.load(job / "job.json")
            except (OSError, ValueError, TypeError) as exc:  # empty or torn job.json (a power cut): set it aside
                target = self.spool.quarantine(job, f"job.json cannot be read ({type(exc).__name__}: {exc}); "
                                                    "python -m deploy.listener requeue puts it back")
                logger.error("Job %s: job.json unreadable (%s); moved to %s", job.name, exc, target)
                continue
            if state.next_try <= time.time():
                try:
                    self._work_on(job, state)
                except Exception as exc:  # one job's trouble (a full disk while writing its state) costs only itself
                    logger.exception("Job %s failed unexpectedly", job.name)
                    self._retry_later(job, state, f"unexpected error: {type(exc).__name__}: {exc}")
        self.spool.write_status(now)

    def _work_on(self, job: Path, state: JobState) -> None:
        output = job / "output"
        code = app_exit_code(output)
        if code not in APP_DONE:
            shutil.rmtree(output, ignore_errors=True)
            output.mkdir()
            error = self._run_app(job / "input", output)
            code = app_exit_code(output)
            if error is None and code not in APP_DONE:
                error = f"app exit code {code} (summary.json)" if code is not None else "app wrote no summary.json"
            if error is not None:
                self._retry_later(job, state, f"app failed: {error}")
                return
            state.history.append(f"{_stamp(time.time())} app: {APP_DONE[code]}")
        files = result_files(output)
        failures = self._deliver(files) if files else []
        if failures:
            self._retry_later(job, state, "delivery failed: " + "; ".join(failures[:5]))
            return
        logger.info("Study %s: %s; %d result file(s) delivered; spool %s removed",
                    state.study, APP_DONE[code], len(files), job.name)
        shutil.rmtree(job)

    def _run_app(self, input_folder: Path, output: Path) -> str | None:
        """Run the app command on one study; return None, or why it could not run to the end."""
        command = [part.format(input=input_folder, output=output, models=self.config.models)
                   for part in shlex.split(self.config.app_command)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        log_path = self.spool.logs / f"{output.parent.name}.log"
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                      timeout=self.config.app_timeout_seconds)
        except subprocess.TimeoutExpired:
            return f"timed out after {self.config.app_timeout_seconds:.0f}s (log: {log_path})"
        except OSError as exc:
            return f"cannot start {command[0]}: {exc}"
        logger.info("App on %s exited with %d after %.1fs (log: %s)", input_folder.parent.name, proc.returncode,
                    time.perf_counter() - started, log_path)
        return None

    def _deliver(self, files: list[Path]) -> list[str]:
        failures = send_c_store(files, self.config.destination, self.config.ae_title)
        if self.config.stow_url:
            failures += send_stow(files, self.config.stow_url)
        return failures

    def _retry_later(self, job: Path, state: JobState, error: str) -> None:
        state.attempts += 1
        state.last_error = error
        state.history.append(f"{_stamp(time.time())} attempt {state.attempts}: {error}")
        if state.attempts >= self.config.max_attempts:
            state.save(job / "job.json")
            os.replace(job, self.spool.failed / job.name)
            logger.error("Study %s: giving up after %d attempts (%s); kept in %s",
                         state.study, state.attempts, error, self.spool.failed / job.name)
            return
        delay = self.config.retry_seconds * 2 ** (state.attempts - 1)
        state.next_try = time.time() + delay
        state.save(job / "job.json")
        logger.warning("Study %s: %s; retrying in %.0fs (attempt %d of %d)", state.study, error, delay,
                       state.attempts + 1, self.config.max_attempts)

    def serve_forever(self, stop: threading.Event) -> None:
        """Receive and process until ``stop`` is set (SIGTERM / SIGINT in :func:`main`)."""
        for line in self.spool.recover():
            logger.warning("Spool: %s", line)
        self.start()
        try:
            while not stop.is_set():
                try:
                    self.process_once()
                except Exception:  # one bad job or a full disk must not stop the listener
                    logger.exception("Processing the spool failed; trying again")
                stop.wait(self.config.poll_seconds)
        finally:
            self.stop()


def _raise_stack_limit() -> None:
    """Holoscan wants a large stack: raise the soft limit (inherited by the app) up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = APP_STACK_BYTES if hard == resource.RLIM_INFINITY else min(APP_STACK_BYTES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.listener", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="models folder with manifest.json (passed to the app as {models})")
    parser.add_argument("--spool", type=Path, required=True, help="folder for received studies and jobs (the listener's only state)")
    parser.add_argument("--allow", action="append", required=True, metavar="AE_TITLE",
                        help="calling AE title allowed to send (repeat for several); all others are rejected")
    parser.add_argument("--destination", type=Destination.parse, required=True, metavar="AE@HOST:PORT",
                        help="where the results go by C-STORE, e.g. PACS@10.0.0.5:104")
    parser.add_argument("--stow-url", help="also send the results by DICOMweb STOW-RS to this URL, e.g. http://pacs:8042/dicom-web/studies")
    parser.add_argument("--ae-title", default="CXR_OPACITY", help="this listener's AE title; callers must call it (default CXR_OPACITY)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="a study is complete after this long without a new instance (default 30)")
    parser.add_argument("--retry-seconds", type=float, default=60.0, help="first retry delay, doubled each attempt (default 60)")
    parser.add_argument("--max-attempts", type=int, default=5, help="attempts before a job is moved to failed/ (default 5)")
    parser.add_argument("--app-command", default=DEFAULT_APP_COMMAND,
                        help="command run per study, with {input}, {output}, {models} filled in (default: python -m app from this "
                             "checkout); e.g. 'docker run --rm --network none -v {input}:/var/holoscan/input:ro "
                             "-v {output}:/var/holoscan/output IMAGE'")
    parser.add_argument("--app-timeout", type=float, default=3600.0, help="seconds before an app run is stopped (default 3600)")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="how often the spool is looked at (default 1)")
    parser.add_argument("--allow-host", action="append", metavar="ADDRESS[/BITS]",
                        help="peer address or network allowed to connect (repeat; default: loopback only)")
    parser.add_argument("--max-associations", type=int, default=4, help="associations at once (default 4)")
    parser.add_argument("--acse-timeout", type=float, default=10.0,
                        help="seconds a new connection has to request an association (default 10)")
    parser.add_argument("--dimse-timeout", type=float, default=60.0, help="seconds to wait for a DIMSE message (default 60)")
    parser.add_argument("--network-timeout", type=float, default=60.0, help="seconds an idle connection is kept (default 60)")
    parser.add_argument("--max-dataset-mb", type=float, default=256.0,
                        help="largest data set accepted; an association sending more is aborted (default 256)")
    parser.add_argument("--min-free-mb", type=float, default=1024.0,
                        help="free space kept on the spool's disk: below it new connections are refused (default 1024)")
    parser.add_argument("-l", "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def requeue_main(argv: list[str]) -> int:
    """``python -m deploy.listener requeue --spool DIR [JOB ...]``: failed jobs back into the queue."""
    parser = argparse.ArgumentParser(prog="python -m deploy.listener requeue",
                                     description="Move failed jobs (all, or the JOB folders named) from SPOOL/failed back "
                                                 "to SPOOL/jobs with their attempts reset; a running listener picks them up.")
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("jobs", nargs="*", help="job folder names in SPOOL/failed (default: all)")
    args = parser.parse_args(argv)
    if not (args.spool / "failed").is_dir():
        parser.error(f"{args.spool} is not a listener spool (no failed/ folder).")
    spool = Spool(args.spool)
    unknown = [name for name in args.jobs if not (spool.failed / name).is_dir()]
    if unknown:
        parser.error(f"not in {spool.failed}: {', '.join(unknown)}")
    moved = spool.requeue(args.jobs)
    print(f"requeued {len(moved)} job(s): {', '.join(moved) if moved else 'none'}")
    spool.write_status(time.time())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["requeue"]:
        return requeue_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if args.log_level != "DEBUG" else logging.DEBUG)
    try:
        config = ListenerConfig(models=args.models, spool=args.spool, allowed_calling_aets=tuple(args.allow),
                                destination=args.destination, ae_title=args.ae_title, bind=args.bind, port=args.port,
                                stow_url=args.stow_url, idle_seconds=args.idle_seconds, retry_seconds=args.retry_seconds,
                                max_attempts=args.max_attempts, app_command=args.app_command,
                                app_timeout_seconds=args.app_timeout, poll_seconds=args.poll_seconds,
                                allowed_hosts=tuple(args.allow_host or ("127.0.0.1/32", "::1/128")),
                                max_associations=args.max_associations, acse_timeout=args.acse_timeout,
                                dimse_timeout=args.dimse_timeout, network_timeout=args.network_timeout,
                                max_dataset_bytes=int(args.max_dataset_mb * 2**20), min_free_bytes=int(args.min_free_mb * 2**20))
    except ValueError as exc:
        parser.error(str(exc))
    _raise_stack_limit()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        Listener(config).serve_forever(stop)
    except OSError as exc:  # e.g. the port is taken
        logger.error("Cannot listen on %s:%d: %s", config.bind, config.port, exc)
        return 2
    logger.info("Stopped; unfinished studies stay in %s", config.spool)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
