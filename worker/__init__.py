"""Fairbook worker: adapts the pure matching engine to Redis (journal in, state and events out)."""
