"""CPU used by each process of a benchmark's stack, per request: bench/api.py and bench/payments.py.

Each part is a process tree named by its root pid (PostgreSQL counts its backends, a worker its
threads); the load generator counts only itself. Read from /proc, so Linux only (elsewhere the
figures are left out)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Between two measurements: wait until the stack's processes together use less than this many
# cores over a second (the previous run's workflows finished their post-milestone steps).
QUIET_CORES = 0.25
QUIET_TIMEOUT_SECONDS = 90.0
IDLE_SECONDS = 3.0  # how long the parts' idle CPU use is measured
LOAD_GENERATOR = "load generator"


def _processes() -> tuple[dict[int, float], dict[int, list[int]]]:
    """CPU seconds (user + system, all threads) of every process, and each one's children."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu: dict[int, float] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state): ppid, ..., utime, stime
        pid = int(entry.name)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
        children.setdefault(int(fields[1]), []).append(pid)
    return cpu, children


@dataclass
class CpuMeter:
    """CPU used by named process trees (Postgres counts its backends, each part its children).
    What the parts use when idle (relays polling, the Temporal server's own timers) is measured
    once and subtracted, so a request's CPU is what it costs."""

    parts: Callable[[], dict[str, int | None]]
    idle_cores: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> dict[str, float]:
        if not Path("/proc/self/stat").exists():
            return {}
        cpu, children = _processes()
        totals: dict[str, float] = {}
        for name, root in self.parts().items():
            if root is None:
                continue
            if name == LOAD_GENERATOR:  # this process only: the stack's processes are its children
                totals[name] = cpu.get(root, 0.0)
                continue
            seen, stack = 0.0, [root]
            while stack:
                pid = stack.pop()
                seen += cpu.get(pid, 0.0)
                stack.extend(children.get(pid, []))
            totals[name] = seen
        return totals

    async def wait_quiet(self) -> None:
        """Wait until the parts (this process aside) are idle: the previous run's workflows are done."""
        began = time.monotonic()
        while time.monotonic() - began < QUIET_TIMEOUT_SECONDS:
            before = self.snapshot()
            if not before:
                await asyncio.sleep(3.0)
                return
            await asyncio.sleep(1.0)
            after = self.snapshot()
            busy = sum(after.get(name, 0.0) - used for name, used in before.items() if name != LOAD_GENERATOR)
            if busy < QUIET_CORES:
                return
        print(f"  (the stack was still busy after {QUIET_TIMEOUT_SECONDS:.0f} s; measuring anyway)", flush=True)

    async def measure_idle(self, seconds: float = IDLE_SECONDS) -> str:
        await self.wait_quiet()
        mark = self.mark()
        await asyncio.sleep(seconds)
        after, elapsed = self.snapshot(), time.monotonic() - mark[0]
        self.idle_cores = {name: max(0.0, after.get(name, 0.0) - used) / elapsed for name, used in mark[1].items()}
        return ", ".join(f"{name} {cores:.2f}" for name, cores in self.idle_cores.items())

    def mark(self) -> tuple[float, dict[str, float]]:
        return time.monotonic(), self.snapshot()

    def per_request(self, mark: tuple[float, dict[str, float]], count: int) -> str:
        """CPU ms per request of each part since `mark`, its idle use subtracted."""
        began, before = mark
        after, elapsed = self.snapshot(), time.monotonic() - began
        if not before or not count:
            return ""
        used = {
            name: max(0.0, after.get(name, 0.0) - spent - self.idle_cores.get(name, 0.0) * elapsed) * 1000 / count
            for name, spent in before.items()
        }
        total = sum(used.values())
        cores = os.cpu_count() or 1
        bound = f"{cores * 1000 / total:.1f}/s" if total > 0 else "n/a"
        parts = ", ".join(f"{name} {value:.0f}" for name, value in used.items())
        return f"CPU ms per request (idle use subtracted): {parts}; total {total:.0f}, so {cores} cores allow {bound}"
