"""Side effects called by workflows: Stripe calls, ledger/state writes, outbox delivery."""
