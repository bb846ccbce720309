"""Deterministic orchestration: payment workflow, reconciliation, relays, the state machine.

Nothing in this package performs I/O; activities are referenced by name only.
"""
