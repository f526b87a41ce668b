"""Benchmarks: ``python -m bench core|worker|e2e|fanout [--json PATH]``."""
