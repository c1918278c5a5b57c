"""Benchmarks: kiqstack against stock taskiq-nats and taskiq-redis setups (``python -m bench``)."""
