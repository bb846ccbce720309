"""Penny's HTTP edge (FastAPI)."""
