"""The `penny` command line.

penny dev [--demo]    run the whole local stack (and the demo once it is healthy); restart a part
                      that crashes, stop on Ctrl-C/SIGTERM or when a part keeps crashing
penny demo            run the marketplace demo against the running stack (starts it if needed)
penny api             run the API (uvicorn)
penny worker          run the Temporal worker (same as `python worker.py`)
penny emulator        run the Stripe emulator
penny migrate         bring the database schema to head
penny config          print every setting, its environment variable, default and value
penny keys create --role merchant|ops [--name NAME]   print a new API key (shown once)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType

from pydantic import ValidationError

from penny.settings import Settings, get_settings


def _load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as error:
        for problem in error.errors():
            print(f"penny: configuration error: {problem['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve_forever(stack: object, run_demo: bool) -> int:
    from penny.services import ServiceError
    from penny.stack import POLL_INTERVAL_SECONDS, Stack, say

    assert isinstance(stack, Stack)
    stopping = False

    def _request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    try:
        stack.start()
        if run_demo and not stopping:
            from penny.demo import run_demo_sync

            run_demo_sync(stack.settings)
        say("Press Ctrl-C to stop.")
        # The supervisor restarts a part that exits; it raises ServiceError when it gives up.
        while not stopping:
            stack.poll()
            time.sleep(POLL_INTERVAL_SECONDS)
        return 0
    except ServiceError as error:
        say(f"penny: {error}")
        return 1
    finally:
        # Ignore further Ctrl-C while stopping so the children are always stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()


def command_dev(args: argparse.Namespace) -> int:
    from penny.stack import Stack

    stack = Stack(_load_settings())
    problems = stack.check_ports()
    if problems:
        for problem in problems:
            print(f"penny: {problem}", file=sys.stderr)
        return 1
    return _serve_forever(stack, run_demo=args.demo)


def command_demo(args: argparse.Namespace) -> int:
    from penny.demo import api_is_up, run_demo_sync
    from penny.stack import Stack

    settings = _load_settings()
    if api_is_up(settings):
        run_demo_sync(settings)
        return 0
    print("The stack is not running; starting it for the demo.")
    stack = Stack(settings)
    problems = stack.check_ports()
    if problems:
        for problem in problems:
            print(f"penny: {problem}", file=sys.stderr)
        return 1
    try:
        stack.start()
        run_demo_sync(settings)
    finally:
        stack.stop()
    return 0


def command_api(args: argparse.Namespace) -> int:
    import uvicorn

    from penny.logs import configure_logging

    settings = _load_settings()
    configure_logging()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
    )
    return 0


def command_worker(args: argparse.Namespace) -> int:
    import worker

    worker.main()
    return 0


def command_emulator(args: argparse.Namespace) -> int:
    import uvicorn

    from penny.logs import configure_logging

    settings = _load_settings()
    configure_logging()
    uvicorn.run(
        "stripe_emulator.app:app", host=settings.host, port=args.port or settings.emulator_port, log_config=None
    )
    return 0


def command_migrate(args: argparse.Namespace) -> int:
    from penny.db import migrate

    settings = _load_settings()
    migrate(settings.effective_database_url)
    print("database schema at head")
    return 0


def command_config(args: argparse.Namespace) -> int:
    from penny.config_table import configuration_table

    print(configuration_table(_load_settings() if args.values else None))
    return 0


def command_keys_create(args: argparse.Namespace) -> int:
    import asyncio

    from penny.db import create_engine
    from penny.keys import create_api_key

    settings = _load_settings()

    async def _create() -> str:
        engine = create_engine(settings.effective_database_url, pool_size=1)
        try:
            async with engine.begin() as connection:
                return await create_api_key(connection, args.role, args.name, pepper=settings.api_key_pepper)
        finally:
            await engine.dispose()

    key = asyncio.run(_create())
    print(key)
    print(f"A {args.role} key named {args.name!r}. It is shown only now: store it safely.", file=sys.stderr)
    return 0


def command_chaos(args: argparse.Namespace) -> int:
    import random

    from penny.chaos import ChaosOptions, Target, run_chaos

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    external = None
    if args.api:
        settings = _load_settings()
        api_key = args.api_key or os.environ.get("PENNY_CHAOS_API_KEY")
        if not api_key:
            print("penny chaos: --api needs --api-key (a merchant key) or PENNY_CHAOS_API_KEY", file=sys.stderr)
            return 2
        external = Target(
            api_url=args.api,
            api_key=api_key,
            emulator_url=settings.effective_stripe_api_base,
            database_url=settings.effective_database_url,
            temporal_address=settings.effective_temporal_address,
            namespace=settings.temporal_namespace,
            logs_dir=settings.data_dir / "logs",
        )
    options = ChaosOptions(
        orders=args.orders,
        seed=seed,
        concurrency=args.concurrency,
        workers=args.workers,
        keep_data=args.keep_data,
    )
    print(f"penny chaos: seed {seed} (replay with --seed {seed})", flush=True)
    report = run_chaos(options, external)
    print(report.render(), flush=True)
    return 0 if report.violations == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="penny", description="Penny payment orchestrator")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the whole local stack")
    dev.add_argument("--demo", action="store_true", help="run the demo once the stack is healthy")
    dev.set_defaults(handler=command_dev)

    commands.add_parser("demo", help="run the marketplace demo").set_defaults(handler=command_demo)
    commands.add_parser("api", help="run the API").set_defaults(handler=command_api)
    commands.add_parser("worker", help="run the Temporal worker").set_defaults(handler=command_worker)

    emulator = commands.add_parser("emulator", help="run the Stripe emulator")
    emulator.add_argument("--port", type=int, default=None)
    emulator.set_defaults(handler=command_emulator)

    commands.add_parser("migrate", help="migrate the database to head").set_defaults(handler=command_migrate)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    keys_create = keys.add_parser("create", help="create an API key and print it once")
    keys_create.add_argument("--role", choices=["merchant", "ops"], required=True)
    keys_create.add_argument("--name", default="cli", help="a label for the key")
    keys_create.set_defaults(handler=command_keys_create)

    chaos = commands.add_parser(
        "chaos", help="seeded soak: drive orders through the real stack under faults, then check the money"
    )
    chaos.add_argument("--orders", type=int, default=200, help="how many orders (a failing seed shrinks with fewer)")
    chaos.add_argument("--seed", type=int, default=None, help="the seed (default: random, printed)")
    chaos.add_argument("--concurrency", type=int, default=16, help="orders in flight at once")
    chaos.add_argument("--workers", type=int, default=1, help="worker processes on the task queue")
    chaos.add_argument("--keep-data", action="store_true", help="keep the run's data directory (logs, databases)")
    chaos.add_argument(
        "--api",
        default=None,
        help="target a running stack's API instead of starting one (its emulator, database and Temporal come from "
        "the usual settings; nothing is killed)",
    )
    chaos.add_argument("--api-key", default=None, help="a merchant API key for --api")
    chaos.set_defaults(handler=command_chaos)

    config = commands.add_parser("config", help="print the configuration table")
    config.add_argument("--values", action="store_true", help="include the current values")
    config.set_defaults(handler=command_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.handler(args))


if __name__ == "__main__":
    main()
