"""Penny's local Stripe: a stateful, Stripe-compatible HTTP server (see stripe_emulator.app).

`create_app(config)` builds the ASGI app; `stripe_emulator.control.EmulatorControl` drives the
control API (faults, clock, state) from Python.
"""

from stripe_emulator.config import EmulatorConfig

__all__ = ["EmulatorConfig", "create_app"]


def create_app(config: EmulatorConfig | None = None):  # type: ignore[no-untyped-def]
    from stripe_emulator.app import create_app as _create_app

    return _create_app(config)
