"""The supervisor behind `penny dev` on real processes: restart after a crash, backoff, giving up,
intentional kills; then the real `penny dev` and the real stack with a worker killed under them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from penny.services import (
    RESTART_BACKOFF_INITIAL_SECONDS,
    RESTART_BACKOFF_MAX_SECONDS,
    RestartPolicy,
    ServiceError,
    Supervisor,
    SupervisorGaveUp,
    free_port,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(1)"]
WAIT_SECONDS = 30.0
# Small waits so the tests do not sleep through real backoffs; the logic is the same.
FAST = RestartPolicy(backoff_initial_seconds=0.05, backoff_max_seconds=0.2, restarts_max=3, window_seconds=60.0)


class Lines:
    """Collects what the supervisor reports, as `penny dev` prints it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def supervisor() -> Iterator[tuple[Supervisor, Lines]]:
    lines = Lines()
    running = Supervisor(FAST, report=lines)
    yield running, lines
    for name in running.names():
        running.remove(name)


def restarted(supervisor: Supervisor, name: str, old_pid: int) -> bool:
    return supervisor.pids()[name] not in (None, old_pid)


def test_backoff_doubles_up_to_the_longest_wait() -> None:
    policy = RestartPolicy()
    waits = [policy.backoff_seconds(crashes) for crashes in range(1, 9)]
    assert waits[0] == RESTART_BACKOFF_INITIAL_SECONDS
    assert waits[1] == 2 * RESTART_BACKOFF_INITIAL_SECONDS
    assert waits[-1] == RESTART_BACKOFF_MAX_SECONDS
    assert waits == sorted(waits)
    assert policy.backoff_seconds(10_000) == RESTART_BACKOFF_MAX_SECONDS


def test_a_killed_child_is_restarted_with_a_new_pid(supervisor: tuple[Supervisor, Lines], tmp_path: Path) -> None:
    running, lines = supervisor
    log_path = tmp_path / "sleeper.log"
    running.start("sleeper", SLEEPER, log_path=log_path)
    old_pid = running.pids()["sleeper"]
    assert old_pid is not None

    os.kill(old_pid, signal.SIGKILL)  # From outside, as the kernel's OOM killer would.

    assert running.supervise_until(lambda: restarted(running, "sleeper", old_pid), WAIT_SECONDS)
    new_pid = running.pids()["sleeper"]
    assert new_pid is not None and new_pid != old_pid
    os.kill(new_pid, 0)  # The new process is alive.
    assert lines.lines[0] == (
        f"sleeper exited with code -9 (SIGKILL); restarting in 0.1 s (restart 1 of 3 in the last 60 s); see {log_path}"
    )
    assert lines.lines[1] == f"sleeper restarted (pid {new_pid})"
    markers = [line for line in log_path.read_text().splitlines() if line.startswith("===== penny dev")]
    assert len(markers) == 1 and "restarting sleeper: sleeper exited with code -9 (SIGKILL)" in markers[0]
    assert running.child("sleeper").crash_restarts == 1


def test_a_child_that_keeps_crashing_is_given_up_after_restarts_max(
    supervisor: tuple[Supervisor, Lines], tmp_path: Path
) -> None:
    running, lines = supervisor
    running.start("crasher", CRASHER, log_path=tmp_path / "crasher.log")

    with pytest.raises(SupervisorGaveUp) as gave_up:
        running.supervise_until(lambda: False, WAIT_SECONDS)

    assert "crasher exited with code 1: 4 crashes in the last 60 s, more than the 3 restarts allowed; giving up" in str(
        gave_up.value
    )
    restarts = [line for line in lines.lines if line.startswith("crasher restarted")]
    assert len(restarts) == FAST.restarts_max
    waits = [float(m.group(1)) for line in lines.lines if (m := re.search(r"restarting in ([\d.]+) s", line))]
    assert waits == [0.1, 0.1, 0.2]  # 0.05, 0.1, 0.2 printed with one decimal: the wait doubles.
    assert running.child("crasher").crash_restarts == FAST.restarts_max


def test_intentional_kills_never_count_toward_giving_up(supervisor: tuple[Supervisor, Lines], tmp_path: Path) -> None:
    running, lines = supervisor
    running.start("sleeper", SLEEPER, log_path=tmp_path / "sleeper.log")

    for _ in range(FAST.restarts_max + 2):
        pid = running.kill("sleeper")
        assert running.supervise_until(lambda: restarted(running, "sleeper", pid), WAIT_SECONDS)  # noqa: B023

    child = running.child("sleeper")
    assert child.intentional_restarts == FAST.restarts_max + 2
    assert child.crash_restarts == 0 and not child.crash_times
    assert all("after an intentional kill; restarting now" in line for line in lines.lines[::2])

    # Real crashes are still counted: the fourth within the window gives up.
    with pytest.raises(SupervisorGaveUp):
        for _ in range(FAST.restarts_max + 1):
            pid = running.pids()["sleeper"] or 0
            os.kill(pid, signal.SIGKILL)
            running.supervise_until(lambda: restarted(running, "sleeper", pid), WAIT_SECONDS)  # noqa: B023


def test_a_child_that_ran_healthily_starts_again_from_the_initial_wait(tmp_path: Path) -> None:
    lines = Lines()
    policy = RestartPolicy(
        backoff_initial_seconds=0.05, backoff_max_seconds=1.0, restarts_max=10, healthy_run_seconds=1.0
    )
    running = Supervisor(policy, report=lines)
    running.start("sleeper", SLEEPER, log_path=tmp_path / "sleeper.log")
    try:
        for _ in range(3):  # Three quick crashes in a row.
            pid = running.pids()["sleeper"] or 0
            os.kill(pid, signal.SIGKILL)
            assert running.supervise_until(lambda: restarted(running, "sleeper", pid), WAIT_SECONDS)  # noqa: B023
        assert running.child("sleeper").crashes_in_a_row == 3
        time.sleep(policy.healthy_run_seconds)
        pid = running.pids()["sleeper"] or 0
        os.kill(pid, signal.SIGKILL)
        assert running.supervise_until(lambda: restarted(running, "sleeper", pid), WAIT_SECONDS)
        assert running.child("sleeper").crashes_in_a_row == 1
        assert "restarting in 0.1 s (restart 4 of 10" in lines.lines[-2]
    finally:
        running.remove("sleeper")


def test_a_removed_child_is_stopped_and_no_longer_supervised(
    supervisor: tuple[Supervisor, Lines], tmp_path: Path
) -> None:
    running, _ = supervisor
    child = running.start("sleeper", SLEEPER, log_path=tmp_path / "sleeper.log")
    running.remove("sleeper")
    assert child.process.returncode == -signal.SIGTERM
    assert running.pids() == {}
    running.poll()  # Nothing to restart.
    assert running.pids() == {}


# --- The real `penny dev` -------------------------------------------------------------------

STACK_START_SECONDS = 120.0


def stack_environment(data_dir: Path) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "TEMPORAL_ADDRESS", "STRIPE_API_BASE"}
        and not name.startswith(("PENNY_", "STRIPE_", "TEMPORAL_"))
    }
    environment.update(
        {
            "PENNY_ENV": "development",
            "PENNY_DATA_DIR": str(data_dir),
            "PENNY_POSTGRES_PORT": str(free_port()),
            "PENNY_TEMPORAL_PORT": str(free_port()),
            "PENNY_TEMPORAL_UI_PORT": str(free_port()),
            "PENNY_EMULATOR_PORT": str(free_port()),
            "PENNY_API_PORT": str(free_port()),
            "PENNY_WORKER_METRICS_PORT": str(free_port()),
            "PENNY_WORKER_TEMPORAL_METRICS_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return environment


def read_until(process: subprocess.Popen[str], pattern: str, seen: list[str]) -> re.Match[str]:
    """Read `penny dev`'s output line by line until one matches (it ends when the process does)."""
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line.rstrip("\n"))
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"`penny dev` ended (code {process.wait()}) before printing {pattern!r}:\n" + "\n".join(seen))


def worker_pid_of(dev_pid: int) -> int:
    for child_pid in Path(f"/proc/{dev_pid}/task/{dev_pid}/children").read_text().split():
        command = Path(f"/proc/{child_pid}/cmdline").read_bytes().split(b"\0")
        if any(part.endswith(b"worker.py") for part in command):
            return int(child_pid)
    raise AssertionError("no worker.py child of penny dev")


async def run_health_check(temporal_address: str) -> str:
    from temporalio.client import Client

    from workflows.health import HealthCheckInput, HealthCheckWorkflow

    client = await Client.connect(temporal_address)
    result = await client.execute_workflow(
        HealthCheckWorkflow.run,
        HealthCheckInput(source="test_supervisor"),
        id=f"health-{uuid.uuid4()}",
        task_queue="penny",
        execution_timeout=timedelta(seconds=60),
    )
    return str(result.heartbeat_id)


@pytest.mark.slow
def test_penny_dev_restarts_a_killed_worker_and_stays_healthy(tmp_path: Path) -> None:
    environment = stack_environment(tmp_path / "penny")
    api = f"http://127.0.0.1:{environment['PENNY_API_PORT']}"
    dev = subprocess.Popen(
        [sys.executable, "-m", "penny.cli", "dev"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        start_new_session=True,
    )
    seen: list[str] = []
    try:
        read_until(dev, r"Press Ctrl-C to stop", seen)
        old_pid = worker_pid_of(dev.pid)

        os.kill(old_pid, signal.SIGKILL)

        read_until(dev, r"^worker exited with code -9 \(SIGKILL\); restarting in 1\.0 s \(restart 1 of 5", seen)
        new_pid = int(read_until(dev, r"^worker restarted \(pid (\d+)\)", seen).group(1))
        assert new_pid != old_pid
        assert worker_pid_of(dev.pid) == new_pid
        # The restarted worker serves the task queue, and the API still answers.
        assert asyncio.run(run_health_check(f"127.0.0.1:{environment['PENNY_TEMPORAL_PORT']}"))
        assert httpx.get(f"{api}/healthz", timeout=10.0).status_code == 200
        assert dev.poll() is None

        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=60) == 0, "\n".join(seen)
        log = (tmp_path / "penny" / "logs" / "worker.log").read_text()
        assert "restarting worker: worker exited with code -9 (SIGKILL)" in log
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Our own child that exited but was not reaped yet is a zombie: gone for every purpose here.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


@pytest.mark.slow
def test_stack_kills_on_purpose_and_runs_a_second_worker(tmp_path: Path) -> None:
    """The API a chaos run uses: pids(), kill(), add_worker(), remove_worker() on the real stack."""
    from penny.settings import Settings
    from penny.stack import Stack

    settings = Settings(
        env="development",
        data_dir=tmp_path / "penny",
        postgres_port=free_port(),
        temporal_port=free_port(),
        temporal_ui_port=free_port(),
        emulator_port=free_port(),
        api_port=free_port(),
        worker_metrics_port=free_port(),
        worker_temporal_metrics_port=free_port(),
    )
    api = f"http://{settings.host}:{settings.api_port}"
    stack = Stack(settings)
    started: list[int] = []
    try:
        stack.start()
        pids = stack.pids()
        assert list(pids) == ["postgres", "temporal", "emulator", "worker", "api"]
        started = [pid for pid in pids.values() if pid is not None]
        assert len(started) == len(pids)

        old_api = stack.kill("api")
        assert old_api == pids["api"]
        assert stack.supervise_until(
            lambda: stack.pids()["api"] not in (None, old_api) and api_is_healthy(api), STACK_START_SECONDS
        )
        assert stack.supervisor.child("api").intentional_restarts == 1
        assert not stack.supervisor.child("api").crash_times

        name = stack.add_worker()
        assert name == "worker-2"
        log_path = settings.data_dir / "logs" / "worker-2.log"
        assert stack.supervise_until(lambda: "worker polling task queue" in log_path.read_text(), STACK_START_SECONDS)
        second = stack.pids()[name]
        assert second is not None
        started.append(second)
        # The second worker serves the task queue beside the first and did not crash meanwhile.
        assert asyncio.run(run_health_check(settings.effective_temporal_address))
        stack.poll()
        assert stack.pids()[name] == second

        stack.remove_worker(name)
        assert name not in stack.pids()
        assert process_is_gone(second)
        with pytest.raises(ServiceError, match="not an extra worker"):
            stack.remove_worker("worker")
    finally:
        stack.stop()
    assert all(process_is_gone(pid) for pid in started)


def api_is_healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
