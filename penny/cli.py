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
penny keys list       every API key: id, name, role, prefix, created, last used, revoked
penny keys revoke ID  revoke a key (its requests are refused from the next one on)
penny reviews list [--kind K] [--status open|resolved] [--payment P] [--limit N]
                      the review queue, newest first
penny reviews show ID one review item, its details and its operators' actions
penny status          health of each part, payments by status, stuck payments, review queue,
                      undelivered events, ledger verify, last reconciliation (exit 1: a problem)
penny ops stuck [--customer C] [--order O]
                      payments stuck, in review or disputed, from Temporal's visibility
penny reviews resolve ID --action A --note TEXT [--operator NAME]
                      resolve an item, by the same rules as POST /v1/reviews/{id}/resolve
                      (talks to the database and, for a payment in review, to Temporal)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from penny.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from temporalio.client import Client

    from api.errors import ApiError
    from api.models import Review

T = TypeVar("T")

CLI_TEMPORAL_CONNECT_TIMEOUT_SECONDS = 10.0
REVIEWS_LISTED_DEFAULT = 20
KEY_NAME_SHOWN_MAX = 40
REVIEW_REASON_SHOWN_MAX = 70  # characters of the reason in `penny reviews list`; `show` prints it whole


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
    from penny.services import HTTP_KEEP_ALIVE_SECONDS

    settings = _load_settings()
    configure_logging()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
    )
    return 0


def command_worker(args: argparse.Namespace) -> int:
    import worker

    worker.main()
    return 0


def command_emulator(args: argparse.Namespace) -> int:
    import uvicorn

    from penny.logs import configure_logging
    from penny.services import HTTP_KEEP_ALIVE_SECONDS

    settings = _load_settings()
    configure_logging()
    uvicorn.run(
        "stripe_emulator.app:app",
        host=settings.host,
        port=args.port or settings.emulator_port,
        log_config=None,
        timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
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


# ----------------------------------------------------------------------------- on call


def command_status(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from penny.ops_cli import status

    settings = settings or _load_settings()
    shown, healthy = asyncio.run(_with_engine(settings, lambda engine: status(settings, engine)))
    print(shown)
    return 0 if healthy else 1


def command_ops_stuck(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from penny.ops_cli import stuck_table

    settings = settings or _load_settings()
    print(asyncio.run(stuck_table(settings, args)))
    return 0


# ----------------------------------------------------------------------------- tables and times


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: columns padded to their widest cell, two spaces apart."""
    widths = [max([len(header), *(len(row[index]) for row in rows)]) for index, header in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _when(moment: datetime | int | None) -> str:
    """UTC, to the second; `-` for never."""
    if moment is None:
        return "-"
    if isinstance(moment, int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _shorten(value: str, length_max: int) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= length_max else flat[: length_max - 1] + "…"


async def _with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    from penny.db import create_engine

    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        return await work(engine)
    finally:
        await engine.dispose()


# ----------------------------------------------------------------------------- keys


def command_webhooks_redeliver(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Re-queue a stored Stripe event the webhook relay gave up on; the next relay round delivers it."""
    from activities.webhooks import requeue_event

    settings = settings or _load_settings()
    operator = f"operator:{args.operator or os.environ.get('USER') or 'unknown'} (cli)"

    async def _requeue(engine: AsyncEngine) -> str | None:
        return await requeue_event(engine, args.event_id, operator)

    refusal = asyncio.run(_with_engine(settings, _requeue))
    if refusal is not None:
        print(f"penny: {refusal}", file=sys.stderr)
        return 1
    print(f"{args.event_id} re-queued: the webhook relay delivers it within PENNY_WEBHOOK_RELAY_INTERVAL_SECONDS")
    return 0


def command_keys_list(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from penny.keys import list_api_keys

    settings = settings or _load_settings()

    async def _list(engine: AsyncEngine) -> str:
        async with engine.connect() as connection:
            keys = await list_api_keys(connection)
        rows = [
            [
                key.id,
                _shorten(key.name, KEY_NAME_SHOWN_MAX),
                key.role,
                key.prefix + "…",
                _when(key.created_at),
                _when(key.last_used_at),
                _when(key.revoked_at),
            ]
            for key in keys
        ]
        return _table(["ID", "NAME", "ROLE", "PREFIX", "CREATED", "LAST USED", "REVOKED"], rows)

    print(asyncio.run(_with_engine(settings, _list)))
    return 0


def command_keys_revoke(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from penny.keys import ApiKeyRecord, api_key_record, revoke_api_key

    settings = settings or _load_settings()

    async def _revoke(engine: AsyncEngine) -> tuple[bool, ApiKeyRecord | None]:
        async with engine.begin() as connection:
            revoked = await revoke_api_key(connection, args.key_id)
            return revoked, await api_key_record(connection, args.key_id)

    revoked, record = asyncio.run(_with_engine(settings, _revoke))
    if record is None:
        print(f"penny: no API key {args.key_id} (see `penny keys list`)", file=sys.stderr)
        return 1
    if not revoked:
        print(f"penny: {args.key_id} was already revoked at {_when(record.revoked_at)}", file=sys.stderr)
        return 1
    print(f"revoked {record.id} ({record.role}, {record.name!r}): its requests are refused (401) from now on")
    return 0


# ----------------------------------------------------------------------------- reviews


def _review_number(text: str) -> int:
    from api.review_queue import review_number

    number = review_number(text)
    if number is None:
        raise argparse.ArgumentTypeError(f"not a review id: {text!r} (expected rev_<n> or <n>)")
    return number


def _review_rows(reviews: Sequence[Review]) -> str:
    rows = [
        [
            review.id,
            _when(review.created),
            review.status,
            review.kind,
            review.payment or "-",
            _shorten(review.reason, REVIEW_REASON_SHOWN_MAX),
        ]
        for review in reviews
    ]
    return _table(["ID", "CREATED", "STATUS", "KIND", "PAYMENT", "REASON"], rows)


def render_review(review: Review) -> str:
    """`penny reviews show`: the item, its details, its resolution and every operator action."""
    lines = [
        f"{review.id}  {review.status}  {review.kind}",
        f"payment:     {review.payment or '-'}",
        f"created:     {_when(review.created)}",
        f"reason:      {review.reason}",
        "details:",
        *(f"  {name}: {value}" for name, value in sorted(review.details.items())),
    ]
    if review.status == "resolved":
        lines += [
            f"resolved:    {_when(review.resolved_at)} by {review.resolved_by}: {review.resolution}",
            f"note:        {review.resolution_note or '-'}",
        ]
    if review.actions:
        rows = [
            [
                _when(action.created),
                action.action,
                action.actor,
                action.via,
                f"{action.payment_status_before or '-'} → {action.payment_status_after or '-'}",
                action.note,
            ]
            for action in review.actions
        ]
        lines += ["actions:", _table(["WHEN", "ACTION", "ACTOR", "VIA", "PAYMENT", "NOTE"], rows)]
        lines += [f"  effect: {action.effect}" for action in review.actions]
    else:
        lines.append("actions:     none")
    return "\n".join(lines)


def _fail(error: ApiError) -> int:
    print(f"penny: {error.detail.code}: {error.detail.message}", file=sys.stderr)
    return 1


def command_reviews_list(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from api.models import PAGE_SIZE_MAX
    from api.review_queue import list_reviews

    settings = settings or _load_settings()

    async def _list(engine: AsyncEngine) -> str:
        reviews, has_more = await list_reviews(
            engine, kind=args.kind, status=args.status, payment_id=args.payment, limit=args.limit
        )
        footer = f"{len(reviews)} item(s), newest first"
        if has_more:
            footer += f"; more exist: raise --limit (at most {PAGE_SIZE_MAX}) or filter with --kind, --status"
        return f"{_review_rows(reviews)}\n{footer}"

    print(asyncio.run(_with_engine(settings, _list)))
    return 0


def command_reviews_show(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from api.errors import ApiError
    from api.review_queue import get_review

    settings = settings or _load_settings()

    async def _show(engine: AsyncEngine) -> str:
        return render_review(await get_review(engine, args.review))

    try:
        print(asyncio.run(_with_engine(settings, _show)))
    except ApiError as error:
        return _fail(error)
    return 0


def _temporal_connector(settings: Settings) -> Callable[[], Awaitable[Client]]:
    async def connect() -> Client:
        from temporalio.client import Client

        from api.errors import service_unavailable

        try:
            async with asyncio.timeout(CLI_TEMPORAL_CONNECT_TIMEOUT_SECONDS):
                return await Client.connect(settings.effective_temporal_address, namespace=settings.temporal_namespace)
        except (TimeoutError, RuntimeError, OSError) as error:
            print(f"penny: Temporal at {settings.effective_temporal_address}: {error}", file=sys.stderr)
            raise service_unavailable("The payment engine (Temporal)") from None

    return connect


def _default_operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def command_reviews_resolve(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from api.errors import ApiError
    from api.review_queue import Resolution, operator_for_cli, request_key_for_cli, resolve_review

    settings = settings or _load_settings()
    name = args.operator or _default_operator()
    if not name.strip():
        print("penny: cannot tell who you are: pass --operator NAME", file=sys.stderr)
        return 2
    resolution = Resolution(
        number=args.review,
        action=args.action,
        note=args.note,
        operator=operator_for_cli(name),
        request_key=request_key_for_cli(),
    )

    async def _resolve(engine: AsyncEngine) -> Review:
        return await resolve_review(engine, _temporal_connector(settings), resolution)

    try:
        review = asyncio.run(_with_engine(settings, _resolve))
    except ApiError as error:
        return _fail(error)
    print(render_review(review))
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
            task_queue=settings.temporal_task_queue,
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

    commands.add_parser(
        "status", help="health of each part, payments, stuck payments, review queue, ledger verify (exit 1: a problem)"
    ).set_defaults(handler=command_status)
    ops = commands.add_parser("ops", help="on-call views").add_subparsers(dest="ops_command", required=True)
    stuck = ops.add_parser("stuck", help="payments stuck, in review or disputed (Temporal visibility queries)")
    stuck.add_argument("--customer", default=None, help="only this customer's payments")
    stuck.add_argument("--order", default=None, help="only this order")
    stuck.set_defaults(handler=command_ops_stuck)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    keys_create = keys.add_parser("create", help="create an API key and print it once")
    keys_create.add_argument("--role", choices=["merchant", "ops"], required=True)
    keys_create.add_argument("--name", default="cli", help="a label for the key")
    keys_create.set_defaults(handler=command_keys_create)
    keys.add_parser("list", help="list API keys (never the keys themselves)").set_defaults(handler=command_keys_list)
    keys_revoke = keys.add_parser("revoke", help="revoke an API key")
    keys_revoke.add_argument("key_id", metavar="ID", help="the key's id (key_...), from `penny keys list`")
    keys_revoke.set_defaults(handler=command_keys_revoke)

    _add_review_commands(commands)

    from penny.reconcile_cli import add_reconcile_commands

    add_reconcile_commands(commands)

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


def _add_review_commands(commands: Any) -> None:
    # Light imports only (pydantic models, the workflow's dataclasses): every command builds this parser.
    from api.models import PAGE_SIZE_MAX, REVIEW_ITEM_ACTIONS, REVIEW_NOTE_LENGTH_MAX
    from workflows.payment_models import RESOLUTIONS

    def limit(text: str) -> int:
        value = int(text)
        if not 1 <= value <= PAGE_SIZE_MAX:
            raise argparse.ArgumentTypeError(f"--limit must be 1 to {PAGE_SIZE_MAX}")
        return value

    def note(text: str) -> str:
        if not 1 <= len(text) <= REVIEW_NOTE_LENGTH_MAX:
            raise argparse.ArgumentTypeError(f"--note must be 1 to {REVIEW_NOTE_LENGTH_MAX} characters")
        return text

    webhooks = commands.add_parser("webhooks", help="stored Stripe webhook events").add_subparsers(
        dest="webhooks_command", required=True
    )
    redeliver = webhooks.add_parser(
        "redeliver", help="re-queue a stored Stripe event the relay gave up on (failed or unrouted)"
    )
    redeliver.add_argument("event_id", metavar="EVENT", help="the Stripe event id (evt_...)")
    redeliver.add_argument("--operator", default=None, help="who you are; default: your login name")
    redeliver.set_defaults(handler=command_webhooks_redeliver)

    reviews = commands.add_parser("reviews", help="the review queue").add_subparsers(
        dest="reviews_command", required=True
    )
    listing = reviews.add_parser("list", help="list review items, newest first")
    listing.add_argument("--kind", default=None, help="only this kind (step_failed, webhook_unrouted, ...)")
    listing.add_argument("--status", choices=["open", "resolved"], default=None, help="default: both")
    listing.add_argument("--payment", default=None, help="only this payment's items (pay_...)")
    listing.add_argument("--limit", type=limit, default=REVIEWS_LISTED_DEFAULT, help=f"1 to {PAGE_SIZE_MAX}")
    listing.set_defaults(handler=command_reviews_list)

    show = reviews.add_parser("show", help="one review item with its actions")
    show.add_argument("review", metavar="ID", type=_review_number, help="rev_<n> or <n>")
    show.set_defaults(handler=command_reviews_show)

    resolve = reviews.add_parser(
        "resolve",
        help="resolve a review item",
        description=f"For an item of a payment in review: {', '.join(RESOLUTIONS)} (the payment workflow checks "
        f"it against Stripe). For any other item: {', '.join(REVIEW_ITEM_ACTIONS)}.",
    )
    resolve.add_argument("review", metavar="ID", type=_review_number, help="rev_<n> or <n>")
    resolve.add_argument("--action", choices=[*RESOLUTIONS, *REVIEW_ITEM_ACTIONS], required=True)
    resolve.add_argument("--note", type=note, required=True, help="why (kept with the item and in its audit trail)")
    resolve.add_argument(
        "--operator", default=None, help="who you are, recorded as operator:<NAME> (cli); default: your login name"
    )
    resolve.set_defaults(handler=command_reviews_resolve)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.handler(args))


if __name__ == "__main__":
    main()
