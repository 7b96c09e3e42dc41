"""Benchmarks of the backfill bundle on the local stack (``python -m benchmarks.replay``)."""
