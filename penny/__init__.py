"""Penny: settings, the `penny` command line, and the local stack runner."""
