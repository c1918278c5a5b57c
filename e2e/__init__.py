"""kiqstack end-to-end suite on a real cluster (kind): `make e2e`, or `pytest e2e/`."""
