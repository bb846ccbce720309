"""A local, stateful, Stripe-compatible HTTP server (the embedded default for Stripe)."""
