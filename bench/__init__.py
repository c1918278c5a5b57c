"""Benchmarks: kiqstack against stock taskiq, Celery, Dramatiq and arq (``python -m bench``)."""
