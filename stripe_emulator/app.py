"""The Stripe emulator as an ASGI application: `app` for `uvicorn stripe_emulator.app:app`, `create_app()` for tests.

Request pipeline for /v1 (Stripe's order): authenticate → route → decode the form → faults
before execution (429, 500 before commit, latency) → idempotency (replay, mismatch, in
flight) → execute atomically → save the idempotent response → faults after commit (500,
dropped connection) → respond. /_emulator/... is the JSON control API (no auth), /health
answers 200.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from stripe_emulator import _disputes, _events, _money, _payments, _refunds
from stripe_emulator import _forms as forms
from stripe_emulator._errors import StripeError, api_error, invalid_request, rate_limited
from stripe_emulator._faults import FaultRegistry
from stripe_emulator._persistence import SnapshotStore, persist_pause_seconds
from stripe_emulator._router import Call, Route, match
from stripe_emulator._state import API_VERSION, COLLECTION_NAMES, State
from stripe_emulator._webhooks import WebhookDispatcher
from stripe_emulator.config import EmulatorConfig

logger = logging.getLogger("stripe_emulator")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

BODY_BYTES_MAX = 1_000_000
IDEMPOTENCY_KEY_LENGTH_MAX = 255
CLOCK_ADVANCE_SECONDS_MAX = 5 * 365 * 86_400
NO_KEY_MESSAGE = (
    "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer "
    "auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for "
    "details, or we can help at https://support.stripe.com/."
)
_JSON_HEADERS = [(b"content-type", b"application/json"), (b"stripe-version", API_VERSION.encode())]
_DROPPED_MESSAGE = "ASGI callable returned without completing response."


class _ClientGone(Exception):
    pass


class _DroppedConnectionLogFilter(logging.Filter):
    """The timeout_after fault drops connections on purpose; uvicorn would log each one as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DROPPED_MESSAGE


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _mask(key: str) -> str:
    return key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "*" * len(key)


def run_due_work(state: State) -> None:
    """Settlement, payouts, disputes, refund failures and pruning due on the emulator clock, in time order."""
    now = state.now_float()
    settled = False
    while True:
        next_job_due = state.jobs[0][0] if state.jobs else math.inf
        if state.next_payout_at <= now and state.next_payout_at <= next_job_due:
            _money.run_automatic_payouts(state)
            state.next_payout_at += state.config.payout_interval_seconds
            state.dirty = True
            continue
        job = state.next_job(now)
        if job is None:
            break
        _, _, kind, subject = job
        if kind == "settle":
            settled = _money.settle(state, subject) or settled
        elif kind == "dispute_create":
            _disputes.create_dispute(state, subject)
        elif kind == "refund_fail":
            _refunds.fail_refund_when_due(state, subject)
        elif kind == "payout_paid":
            _money.mark_payout_paid(state, subject)
        else:
            logger.error("unknown job kind %s for %s", kind, subject)
    if settled:
        state.emit("balance.available", _money.balance_object(state))
    state.prune_idempotency(now)
    state.prune_events(now)


class Emulator:
    """The ASGI callable. One instance owns one state; everything runs on the server's event loop."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig.from_env()
        self.state = State(self.config)
        self.faults = FaultRegistry()
        self.snapshots = SnapshotStore(self.config.sqlite_path) if self.config.sqlite_path else None
        if self.snapshots is not None:
            snapshot = self.snapshots.load()
            if snapshot is not None:
                self.state.load_json(snapshot)
        self.dispatcher: WebhookDispatcher | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.started = False
        logging.getLogger("uvicorn.error").addFilter(_DroppedConnectionLogFilter())

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.dispatcher = WebhookDispatcher(self.state, self.faults)
        self.state.on_delivery_scheduled = self.dispatcher.notify
        self.tasks = [
            asyncio.create_task(self.dispatcher.run()),
            asyncio.create_task(self._tick_forever()),
        ]
        if self.snapshots is not None:
            self.tasks.append(asyncio.create_task(self._persist_forever()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []
        self.started = False
        self.persist_now()

    def persist_now(self) -> None:
        if self.snapshots is not None:
            self.snapshots.save(json.dumps(self.state.to_json(), separators=(",", ":")))
            self.state.dirty = False

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval_seconds)
            try:
                run_due_work(self.state)
            except Exception:
                logger.exception("due work failed")

    async def _persist_forever(self) -> None:
        assert self.snapshots is not None
        pause_seconds = self.config.persist_interval_seconds
        while True:
            await asyncio.sleep(pause_seconds)
            if not self.state.dirty:
                continue
            self.state.dirty = False
            started = time.perf_counter()
            body = json.dumps(self.state.to_json(), separators=(",", ":"))
            try:
                await asyncio.to_thread(self.snapshots.save, body)
            except Exception:
                self.state.dirty = True
                logger.exception("could not persist the emulator state")
            pause_seconds = persist_pause_seconds(self.config.persist_interval_seconds, time.perf_counter() - started)

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if not self.started:
            await self.start()
        path = scope["path"]
        try:
            if path.startswith("/v1/"):
                await self._api(scope, receive, send)
            elif path.startswith("/_emulator/"):
                await self._control(scope, receive, send)
            elif path == "/health":
                await _respond(send, 200, _dumps({"status": "ok"}))
            else:
                await _respond(send, 404, _dumps(_unrecognized(scope).body()))
        except _ClientGone:
            return
        except StripeError as error:
            await _respond(send, error.status, _dumps(error.body()))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----------------------------------------------------------------- the Stripe API

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        method: str = scope["method"]
        path: str = scope["path"]
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        request_id = state.new_id("req", 14)
        base_headers = [*_JSON_HEADERS, (b"request-id", request_id.encode())]
        auth_error = _authenticate(headers.get("authorization"))
        if auth_error is not None:
            await _respond(send, auth_error.status, _dumps(auth_error.body()), base_headers)
            return
        route, path_params, _ = match(method, path)
        if route is None:
            await _respond(send, 404, _dumps(_unrecognized(scope).body()), base_headers)
            return
        raw_body = await _read_body(receive)
        try:
            params = forms.decode(raw_body if method == "POST" and raw_body else scope["query_string"])
        except StripeError as error:
            await _respond(send, error.status, _dumps(error.body()), base_headers)
            return
        before, latency_seconds = self.faults.before(method, path, state.rng, params)
        idempotency_key = headers.get("idempotency-key") if method == "POST" else None
        if before is not None:
            if latency_seconds:
                await asyncio.sleep(latency_seconds)
            injected = rate_limited() if before.kind == "rate_limit_429" else api_error()
            await _respond(send, injected.status, _dumps(injected.body()), base_headers)
            return
        if idempotency_key is not None:
            base_headers.append((b"idempotency-key", idempotency_key.encode("latin-1", "replace")))
            replay = self._idempotency_check(idempotency_key, headers.get("stripe-account", ""), method, path, params)
            if replay is not None:
                status, body, replay_headers = replay
                after = self.faults.after(method, path, state.rng, params) if self.faults.rules else None
                if after is not None and after.kind == "error_500_after":
                    status, body = 500, _dumps(api_error().body())
                await self._finish(send, receive, status, body, base_headers + replay_headers, after)
                return
        record_key = None
        if idempotency_key is not None:
            record_key = _record_key(idempotency_key, headers.get("stripe-account", ""))
            state.idempotency[record_key] = {
                "key": idempotency_key,
                "status": "in_flight",
                "method": method,
                "path": path,
                "fingerprint": forms.fingerprint(method, path, params),
                "created": state.now_float(),
                "request_id": request_id,
            }
        try:
            if latency_seconds:
                # The request is executing (and holds its idempotency key) while it is slow.
                await asyncio.sleep(latency_seconds)
            call = Call(
                state,
                params,
                path_params,
                {"id": request_id, "idempotency_key": idempotency_key},
                self.config.strict_parameters,
            )
            status, body, saved = self._execute(route, call)
            after = self.faults.after(method, path, state.rng, params) if saved and self.faults.rules else None
            if after is not None and after.kind == "error_500_after":
                # As Stripe documents: a 500 returned once execution began is saved under the
                # key and replayed, although the operation happened. Only a lookup finds it.
                status, body = 500, _dumps(api_error().body())
            if record_key is not None:
                record = state.idempotency[record_key]
                if saved:
                    record.update(status="done", response_status=status, response_body=body.decode())
                else:
                    del state.idempotency[record_key]
                record_key = None
                state.dirty = True
        finally:
            if record_key is not None and state.idempotency.get(record_key, {}).get("status") == "in_flight":
                del state.idempotency[record_key]
        await self._finish(send, receive, status, body, base_headers, after)

    def _idempotency_check(
        self, key: str, account: str, method: str, path: str, params: dict[str, Any]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """A saved response to replay, or None to execute; raises nothing, answers errors as responses."""
        state = self.state
        if len(key) > IDEMPOTENCY_KEY_LENGTH_MAX:
            error = invalid_request(
                f"Invalid Idempotency-Key: keys must be at most {IDEMPOTENCY_KEY_LENGTH_MAX} characters long.",
            )
            return error.status, _dumps(error.body()), []
        record_key = _record_key(key, account)
        record = state.idempotency.get(record_key)
        horizon = state.now_float() - self.config.idempotency_window_seconds
        if record is not None and record["status"] == "done" and record["created"] <= horizon:
            # Past the window the key is forgotten: the request executes as new.
            del state.idempotency[record_key]
            record = None
        if record is None:
            return None
        if record["status"] == "in_flight":
            error = StripeError(
                409,
                "idempotency_error",
                f"There is currently another in-progress request using this Stripe API key (or one of its "
                f"restricted keys) and idempotency key ('{key}'). Try again later.",
                code="idempotency_key_in_use",
                saved=False,
            )
            return error.status, _dumps(error.body()), [(b"stripe-should-retry", b"true")]
        if record["method"] != method or record["path"] != path:
            error = StripeError(
                400,
                "idempotency_error",
                f"Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{record['method']} {record['path']}' vs '{method} {path}'). Try using a key other than '{key}' if "
                "you meant to execute a different request.",
                saved=False,
            )
            return error.status, _dumps(error.body()), []
        if record["fingerprint"] != forms.fingerprint(method, path, params):
            error = StripeError(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used with. "
                f"Try using a key other than '{key}' if you meant to execute a different request.",
                saved=False,
            )
            return error.status, _dumps(error.body()), []
        return (
            record["response_status"],
            record["response_body"].encode(),
            [(b"idempotent-replayed", b"true"), (b"original-request", record["request_id"].encode())],
        )

    def _execute(self, route: Route, call: Call) -> tuple[int, bytes, bool]:
        """(status, body, saved): saved is whether execution began (Stripe saves those responses)."""
        try:
            if route.allowed is not None:
                forms.check_known(call.params, route.allowed, call.strict)
            expand = forms.string_list(call.params, "expand")
            result = route.handler(call)
            if expand:
                result = self.state.expand(result, expand)
            return 200, _dumps(result), True
        except StripeError as error:
            return error.status, _dumps(error.body()), error.saved
        except Exception:
            logger.exception("emulator handler failed for %s", call.request.get("id"))
            return 500, _dumps(api_error().body()), True

    async def _finish(
        self,
        send: Send,
        receive: Receive,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        after: Any,
    ) -> None:
        """Answer, unless an "after commit" fault hides the answer: the operation happened either way."""
        if after is None or after.kind == "error_500_after":
            await _respond(send, status, body, headers)
            return
        seconds = (
            after.latency_seconds if after.latency_seconds is not None else self.config.timeout_after_default_seconds
        )
        await _hang_and_drop(receive, send, seconds)

    # ----------------------------------------------------------------- the control API

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_body = await _read_body(receive)
        try:
            body = json.loads(raw_body) if raw_body else {}
            if not isinstance(body, dict):
                raise invalid_request("The body must be a JSON object.")
            query = {name: values[-1] for name, values in parse_qs(scope["query_string"].decode()).items()}
            result = await self._control_dispatch(scope["method"], scope["path"].rstrip("/"), body, query)
            await _respond(send, 200, _dumps(result))
        except json.JSONDecodeError:
            await _respond(send, 400, _dumps(invalid_request("The body must be JSON.").body()))
        except StripeError as error:
            await _respond(send, error.status, _dumps(error.body()))

    async def _control_dispatch(self, method: str, path: str, body: dict[str, Any], query: dict[str, str]) -> Any:
        state, faults = self.state, self.faults
        parts = path.split("/")[2:]  # after "", "_emulator"
        head = parts[0] if parts else ""
        if head == "faults" or head == "webhook_faults":
            webhook = head == "webhook_faults"
            if method == "POST" and len(parts) == 1:
                return (faults.add_webhook(body) if webhook else faults.add(body)).describe()
            if method == "GET" and len(parts) == 1:
                rules = faults.webhook_rules if webhook else faults.rules
                return {"object": "list", "data": [rule.describe() for rule in rules]}
            if method == "DELETE" and len(parts) == 1:
                count = len(faults.webhook_rules if webhook else faults.rules)
                faults.clear_webhook() if webhook else faults.clear()
                return {"deleted": count}
            if method == "DELETE" and len(parts) == 2:
                if webhook:
                    faults.remove_webhook(parts[1])
                else:
                    faults.remove(parts[1])
                return {"deleted": True, "id": parts[1]}
        elif path == "/_emulator/reset" and method == "POST":
            state.reset()
            faults.clear()
            faults.clear_webhook()
            if self.dispatcher is not None:
                self.dispatcher.reset()
            self.persist_now()
            return {"reset": True}
        elif path == "/_emulator/clock" and method == "GET":
            return self._clock()
        elif path == "/_emulator/clock/advance" and method == "POST":
            seconds = body.get("seconds")
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not 0 <= seconds <= CLOCK_ADVANCE_SECONDS_MAX
            ):
                raise invalid_request(
                    f"seconds must be a number between 0 and {CLOCK_ADVANCE_SECONDS_MAX}", param="seconds"
                )
            state.clock_offset_seconds += float(seconds)
            state.dirty = True
            run_due_work(state)
            return self._clock()
        elif path == "/_emulator/clock/run_due" and method == "POST":
            run_due_work(state)
            return self._clock()
        elif path == "/_emulator/seed" and method == "POST":
            seed = body.get("seed")
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise invalid_request("seed must be an integer", param="seed")
            state.seed(seed)
            return {"seed": seed}
        elif path == "/_emulator/state" and method == "GET":
            include = set(query["include"].split(",")) if query.get("include") else None
            return self.export_state(include)
        elif path == "/_emulator/webhook_deliveries" and method == "GET":
            return {"object": "list", "data": self._deliveries(query)}
        elif path == "/_emulator/webhooks/idle" and method == "GET":
            return {"idle": self.dispatcher is None or self.dispatcher.idle()}
        elif len(parts) == 3 and head == "payment_intents" and parts[2] == "complete_action" and method == "POST":
            return _payments.complete_action(state, parts[1], str(body.get("outcome", "")))
        elif len(parts) == 3 and head == "payment_intents" and parts[2] == "override_status" and method == "POST":
            return _payments.override_status(state, parts[1], str(body.get("status", "")))
        elif len(parts) == 3 and head == "disputes" and parts[2] == "close" and method == "POST":
            return _disputes.close_dispute(state, parts[1], str(body.get("outcome", "")))
        elif len(parts) == 3 and head == "refunds" and parts[2] == "fail" and method == "POST":
            reason = body.get("failure_reason", _refunds.REFUND_FAIL_CARD_REASON)
            if not isinstance(reason, str):
                raise invalid_request("failure_reason must be a string", param="failure_reason")
            return _refunds.fail_refund(state, parts[1], reason)
        elif len(parts) == 3 and head == "accounts" and parts[2] == "reversals" and method == "POST":
            fail = body.get("fail")
            if not isinstance(fail, bool):
                raise invalid_request("fail must be true or false", param="fail")
            return _money.set_reversals_refused(state, parts[1], fail)
        elif len(parts) == 3 and head == "webhook_endpoints" and parts[2] == "roll_secret" and method == "POST":
            expires = body.get("expires_in_seconds")
            if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int) or expires < 0):
                raise invalid_request("expires_in_seconds must be a non-negative integer", param="expires_in_seconds")
            return _events.roll_secret(state, parts[1], expires)
        raise StripeError(
            404, "invalid_request_error", f"Unrecognized emulator control URL ({method}: {path}).", saved=False
        )

    def _clock(self) -> dict[str, Any]:
        return {
            "now": self.state.now(),
            "offset_seconds": self.state.clock_offset_seconds,
            "next_payout_at": int(self.state.next_payout_at),
        }

    def _deliveries(self, query: dict[str, str]) -> list[dict[str, Any]]:
        filters = {name: query[name] for name in ("event_id", "endpoint_id", "status", "event_type") if query.get(name)}
        return [
            delivery
            for delivery in self.state.deliveries.values()
            if all(delivery.get(name) == value for name, value in filters.items())
        ]

    def export_state(self, include: set[str] | None = None) -> dict[str, Any]:
        state = self.state
        result: dict[str, Any] = {}
        for object_type, name in COLLECTION_NAMES.items():
            if include is None or name in include:
                result[name] = [state.objects[object_id] for object_id in state.collections[object_type]]

        def wanted(name: str) -> bool:
            return include is None or name in include

        if wanted("webhook_deliveries"):
            result["webhook_deliveries"] = list(state.deliveries.values())
        if wanted("webhook_endpoint_secrets"):
            result["webhook_endpoint_secrets"] = {
                endpoint_id: _events.active_secrets(state, endpoint_id)
                for endpoint_id in state.collections["webhook_endpoint"]
            }
        if wanted("idempotency_keys"):
            result["idempotency_keys"] = [
                {
                    name: record.get(name)
                    for name in ("key", "status", "method", "path", "created", "response_status", "request_id")
                }
                for record in state.idempotency.values()
            ]
        if wanted("faults"):
            result["faults"] = [rule.describe() for rule in self.faults.rules]
        if wanted("webhook_faults"):
            result["webhook_faults"] = [rule.describe() for rule in self.faults.webhook_rules]
        if wanted("balance"):
            result["balance"] = _money.balance_object(state)
        if wanted("clock"):
            result["clock"] = self._clock()
        if wanted("payout_members"):
            result["payout_members"] = state.payout_members
        return result


def _record_key(key: str, account: str) -> str:
    # Stripe scopes idempotency keys per account; every sk_test_ key is the same emulated account.
    return f"{account}\x00{key}"


def _authenticate(header: str | None) -> StripeError | None:
    if not header:
        return StripeError(401, "invalid_request_error", NO_KEY_MESSAGE, saved=False)
    scheme, _, credential = header.partition(" ")
    key = credential.strip()
    if scheme.lower() == "basic":
        try:
            key = base64.b64decode(key).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            key = ""
    elif scheme.lower() != "bearer":
        key = header.strip()
    if not key:
        return StripeError(401, "invalid_request_error", NO_KEY_MESSAGE, saved=False)
    if not key.startswith(("sk_test_", "rk_test_")):
        return StripeError(401, "invalid_request_error", f"Invalid API Key provided: {_mask(key)}", saved=False)
    return None


def _unrecognized(scope: Scope) -> StripeError:
    return StripeError(
        404,
        "invalid_request_error",
        f"Unrecognized request URL ({scope['method']}: {scope['path']}). Please see https://stripe.com/docs or we "
        "can help at https://support.stripe.com/.",
        saved=False,
    )


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > BODY_BYTES_MAX:
            raise invalid_request(f"Request bodies are limited to {BODY_BYTES_MAX} bytes.")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    response_headers = [*(headers or _JSON_HEADERS), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _hang_and_drop(receive: Receive, send: Send, seconds: float) -> None:
    """The operation committed; the client never hears. Hang until it gives up, or drop the connection."""
    try:
        await asyncio.wait_for(_wait_for_disconnect(receive), timeout=seconds)
        return
    except TimeoutError:
        pass
    # Promise a body and end without it: the server closes the connection mid-response, which
    # every HTTP client reports as a connection error (the status line says 500, never success).
    await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"100"), *_JSON_HEADERS]})


def create_app(config: EmulatorConfig | None = None) -> Emulator:
    return Emulator(config)


app = create_app()
