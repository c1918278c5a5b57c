"""kiqstack: Python background tasks on Kubernetes (FastAPI + taskiq, NATS JetStream, Redis)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiqstack")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
