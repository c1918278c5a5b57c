"""Inspect and replay the dead-letter stream (``python -m app dlq list|replay``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from app.broker import (
    DEAD_LETTER_DELIVERIES_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_SEQUENCE_HEADER,
    DEAD_LETTER_TIME_HEADER,
    TASK_NAME_HEADER,
)
from app.config import Settings

_DEAD_LETTER_HEADERS = {
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_DELIVERIES_HEADER,
    DEAD_LETTER_SEQUENCE_HEADER,
    DEAD_LETTER_TIME_HEADER,
}


@dataclass(frozen=True)
class DeadLetter:
    """One message in the dead-letter stream."""

    sequence: int
    task_id: str | None
    task_name: str | None
    reason: str | None
    deliveries: int | None
    dead_lettered_at: float | None
    original_sequence: int | None
    args: Any = None
    kwargs: Any = None


@asynccontextmanager
async def _jetstream(settings: Settings) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    client = await nats.connect(settings.nats_url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        yield client, client.jetstream()
    finally:
        await client.close()


def _decode(sequence: int, headers: dict[str, str] | None, data: bytes) -> DeadLetter:
    headers = headers or {}
    try:
        body = json.loads(data)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}

    def num(key: str, kind: type[int] | type[float]) -> Any:
        try:
            return kind(headers[key])
        except (KeyError, ValueError):
            return None

    return DeadLetter(
        sequence=sequence,
        task_id=body.get("task_id"),
        task_name=headers.get(TASK_NAME_HEADER) or body.get("task_name"),
        reason=headers.get(DEAD_LETTER_REASON_HEADER),
        deliveries=num(DEAD_LETTER_DELIVERIES_HEADER, int),
        dead_lettered_at=num(DEAD_LETTER_TIME_HEADER, float),
        original_sequence=num(DEAD_LETTER_SEQUENCE_HEADER, int),
        args=body.get("args"),
        kwargs=body.get("kwargs"),
    )


async def list_dead_letters(settings: Settings, limit: int = 100) -> list[DeadLetter]:
    """Read up to ``limit`` dead letters, oldest first.

    :param settings: kiqstack settings.
    :param limit: most messages to return.
    :return: the dead letters.
    """
    found: list[DeadLetter] = []
    async with _jetstream(settings) as (_, js):
        info = await js.stream_info(settings.nats_dead_letter_stream)
        seq = info.state.first_seq
        while seq <= info.state.last_seq and len(found) < limit:
            try:
                msg = await js.get_msg(settings.nats_dead_letter_stream, seq)
            except NotFoundError:
                seq += 1
                continue
            found.append(_decode(seq, msg.headers, msg.data or b""))
            seq += 1
    return found


async def replay_dead_letters(settings: Settings, sequences: list[int] | None) -> list[int]:
    """Send dead letters back to the task stream and remove them from the dead-letter stream.

    A message is removed only after JetStream stored its copy in the task stream.

    :param settings: kiqstack settings.
    :param sequences: dead-letter sequences to replay; None replays all.
    :return: the sequences replayed.
    """
    replayed: list[int] = []
    async with _jetstream(settings) as (_, js):
        if sequences is None:
            info = await js.stream_info(settings.nats_dead_letter_stream)
            sequences = list(range(info.state.first_seq, info.state.last_seq + 1))
        for seq in sequences:
            try:
                msg = await js.get_msg(settings.nats_dead_letter_stream, seq)
            except NotFoundError:
                continue
            headers = {
                k: v for k, v in (msg.headers or {}).items() if k not in _DEAD_LETTER_HEADERS
            }
            letter = _decode(seq, msg.headers, msg.data or b"")
            headers["Nats-Msg-Id"] = f"{letter.task_id or 'unknown'}:replay:{seq}"
            await js.publish(settings.nats_subject, payload=msg.data or b"", headers=headers)
            await js.delete_msg(settings.nats_dead_letter_stream, seq)
            replayed.append(seq)
    return replayed


def as_json(letter: DeadLetter) -> str:
    """One dead letter as a JSON line."""
    return json.dumps(asdict(letter), default=str)
