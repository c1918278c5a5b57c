"""Task results in Redis: :class:`KiqResultBackend` and its parts (see :mod:`.backend`)."""

from app.results.backend import DONE_SUFFIX, KiqResultBackend, result_save_failed
from app.results.records import META_SUFFIX

__all__ = ["DONE_SUFFIX", "META_SUFFIX", "KiqResultBackend", "result_save_failed"]
