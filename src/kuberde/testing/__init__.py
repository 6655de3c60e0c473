"""Helpers for tests and benchmarks (they need kmock, a dev dependency: not for the runtime)."""
