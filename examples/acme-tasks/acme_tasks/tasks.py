"""ACME's tasks: typed functions registered on kiqstack's broker under explicit names.

Each task has a ``task_name=``: the name clients dispatch (``POST /tasks/acme.slugify``) and the
name queued messages carry, so moving or renaming the function never orphans queued tasks.
Arguments are validated against the type hints before anything is queued; an exception raised here
becomes the task's error result (``{"type": "ValueError", "message": ...}``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from app.tasks.broker import register_task

MAX_SLUG_LENGTH = 200


@register_task(task_name="acme.slugify")
async def slugify(title: str, max_length: int = 40) -> str:
    """Turn a title into a URL slug: ASCII, lower case, words joined by ``-``.

    :param title: any text.
    :param max_length: longest slug to return (1 to 200).
    :return: the slug.
    :raises ValueError: if ``max_length`` is out of range or nothing of ``title`` is left.
    """
    if not 1 <= max_length <= MAX_SLUG_LENGTH:
        raise ValueError(f"max_length must be between 1 and {MAX_SLUG_LENGTH}")
    ascii_text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if not slug:
        raise ValueError("title has no letters or digits")
    return slug[:max_length].rstrip("-")


@register_task(task_name="acme.invoice_total")
async def invoice_total(
    quantities: list[int], unit_prices: list[float], tax_rate: float = 0.0
) -> dict[str, float]:
    """Total an invoice: net, tax and gross, rounded to cents.

    :param quantities: quantity of each line.
    :param unit_prices: unit price of each line (same length as ``quantities``).
    :param tax_rate: tax as a fraction, e.g. ``0.2`` for 20 %.
    :return: ``{"net": ..., "tax": ..., "gross": ...}``.
    :raises ValueError: if the lists differ in length or a number is negative.
    """
    if len(quantities) != len(unit_prices):
        raise ValueError(
            f"{len(quantities)} quantities but {len(unit_prices)} unit prices: one of each per line"
        )
    if tax_rate < 0 or any(q < 0 for q in quantities) or any(p < 0 for p in unit_prices):
        raise ValueError("quantities, prices and the tax rate must not be negative")
    net = round(sum(q * p for q, p in zip(quantities, unit_prices, strict=True)), 2)
    tax = round(net * tax_rate, 2)
    return {"net": net, "tax": tax, "gross": round(net + tax, 2)}


@register_task(task_name="acme.word_count", queue="cpu")
def word_count(text: str, top: int = 3) -> list[tuple[str, int]]:
    """Count the most frequent words of a text (a sync task: taskiq runs it in a thread).

    It goes to the ``cpu`` queue: only workers whose ``WORKER_QUEUES`` include ``cpu`` run it.

    :param text: any text.
    :param top: how many words to return.
    :return: ``[word, count]`` pairs, most frequent first, ties in order of appearance.
    """
    words = re.findall(r"[\w']+", text.lower())
    return Counter(words).most_common(max(top, 0))
