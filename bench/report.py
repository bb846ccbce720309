"""`make bench`: run every benchmark in bench/ and write bench/REPORT.md.

Each benchmark starts its own stack (embedded PostgreSQL, the Temporal dev server, the emulator,
workers and API as it needs) and prints its figures, each next to the baseline it measured in
the same run (pgbench TPC-B for the ledger, a bare workflow with the same activity shape for
payments, ...). This script runs them one after another on a quiet machine, times them, and
writes their output verbatim under a header that says when, where and at which commit, so anyone
can reproduce a figure with the command shown above it.

    .venv/bin/python bench/report.py                 # all, default sizes (about 20 minutes here)
    .venv/bin/python bench/report.py ledger payments # some of them (the report keeps the others)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from penny.logs import scrub

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
REPORT = BENCH_DIR / "REPORT.md"
# In the order they run: cheapest first, so a failure shows early.
BENCHMARKS = ("emulator", "ledger", "webhooks", "payments", "workers", "api")
BENCHMARK_TIMEOUT_SECONDS = 1800
# Extra arguments per benchmark in the report: the ledger's server-side profile is part of it.
BENCHMARK_ARGUMENTS = {"ledger": ["--profile"]}
# Hand-written: where the time goes, from the profiles (py-spy, pg_stat_statements) behind the
# changes, appended to the report as it is.
PROFILE_NOTES = BENCH_DIR / "PROFILE.md"


def _git_commit() -> str:
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return described.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return "unknown"


def machine() -> str:
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{_memory_gib()} RAM, Python {platform.python_version()}"
    )


def run(name: str) -> tuple[str, float, int]:
    command = [sys.executable, str(BENCH_DIR / f"{name}.py"), *BENCHMARK_ARGUMENTS.get(name, [])]
    began = time.monotonic()
    try:
        finished = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=BENCHMARK_TIMEOUT_SECONDS, check=False
        )
        output, code = finished.stdout + (finished.stderr if finished.returncode else ""), finished.returncode
    except subprocess.TimeoutExpired as expired:
        partial = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout
        output, code = f"{partial or ''}\n(timed out after {BENCHMARK_TIMEOUT_SECONDS} s)", 124
    return output, time.monotonic() - began, code


def previous_sections() -> dict[str, str]:
    """The last report's section per benchmark ("## name" up to the next "## ")."""
    if not REPORT.exists():
        return {}
    text = REPORT.read_text()
    sections: dict[str, str] = {}
    parts = text.split("\n## ")
    for part in parts[1:]:
        name = part.split("\n", 1)[0].strip()
        if name in BENCHMARKS:
            sections[name] = "## " + part.rstrip() + "\n"
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    names = [name for name in BENCHMARKS if not args.names or name in args.names]
    started = datetime.now(UTC)
    # Re-running some benchmarks keeps the others' sections from the last report (each section
    # says when and at which commit it was measured).
    sections = previous_sections() if args.names else {}
    failed = 0
    for name in names:
        print(f"bench: {name} …", flush=True)
        output, seconds, code = run(name)
        output = scrub(output)  # a stack's start-up prints its throwaway API key: never into the report
        print(output, flush=True)
        failed += code != 0
        status = "" if code == 0 else f" — **exit code {code}**"
        arguments = "".join(f" {argument}" for argument in BENCHMARK_ARGUMENTS.get(name, []))
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = f"`.venv/bin/python bench/{name}.py{arguments}` — {seconds:.0f} s, {when}, `{_git_commit()}`{status}"
        sections[name] = f"## {name}\n\n{command}\n\n```\n{output.rstrip()}\n```\n"
    rerun = " (these benchmarks only; the other sections are kept from the last report)" if args.names else ""
    header = (
        "# Benchmark report\n\n"
        f"Generated by `make bench` (`bench/report.py`) on {started.strftime('%Y-%m-%d %H:%M UTC')}{rerun}, commit "
        f"`{_git_commit()}`, on {machine()}. Every process (PostgreSQL, Temporal, emulator, workers, API and "
        "the load generator) shares this machine. Each benchmark prints its figures beside the baseline it "
        "measured in the same run; re-run one with the command above its output.\n"
    )
    notes = PROFILE_NOTES.read_text() if PROFILE_NOTES.exists() else ""
    ordered = [sections[name] for name in BENCHMARKS if name in sections]
    REPORT.write_text(header + "\n" + "\n".join(ordered) + ("\n" + notes if notes else ""))
    print(f"bench: wrote {REPORT.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
