"""Inspect and replay the dead-letter stream (``python -m app dlq list|replay``).

Every message is handled on its own. One whose body cannot be decoded is still listed (with
``body_error``) and is never replayed (it stays in the dead-letter stream, reported as refused);
one that cannot be sent back is reported and left in place; the others go on. Only a problem that
concerns every message (NATS unreachable, the stream missing) stops the command, with a
:class:`DeadLetterError` naming the setting to check.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError, NoServersError
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError

from app.config import Settings
from app.errors import AppError
from app.queues import DEFAULT_QUEUE, QUEUE_NAME_PATTERN
from app.redact import redact, redact_url
from app.wire import (
    DEAD_LETTER_DELIVERIES_HEADER,
    DEAD_LETTER_DETAIL_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_SEQUENCE_HEADER,
    DEAD_LETTER_TIME_HEADER,
    QUEUE_HEADER,
    TASK_NAME_HEADER,
    replay_headers,
)

#: Seconds to wait for NATS to accept the connection, and for each JetStream request.
CONNECT_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0


class DeadLetterError(AppError):
    """A problem that stops a dead-letter command as a whole (NATS unreachable, no stream)."""

    template = "{problem}"


@dataclass(frozen=True)
class DeadLetter:
    """One message in the dead-letter stream, as ``dlq list`` shows it.

    ``body_error`` says why the body could not be decoded (then ``task_id``, ``args`` and
    ``kwargs`` are None); it is None for a well-formed task message.
    """

    sequence: int
    task_id: str | None
    task_name: str | None
    #: The queue it was sent to; ``dlq replay`` sends it back there.
    queue: str
    reason: str | None
    deliveries: int | None
    dead_lettered_at: float | None
    original_sequence: int | None
    args: Any = None
    kwargs: Any = None
    body_error: str | None = None
    #: What exactly was wrong, for the validation reasons (``invalid-label: ...``).
    detail: str | None = None

    def as_json(self) -> str:
        """Render the dead letter as one JSON line; arguments too deep to encode are left out."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        try:
            return json.dumps(fields, default=str)
        except (RecursionError, ValueError) as exc:
            fields.update(args=None, kwargs=None, body_error=f"arguments not shown: {exc}")
            return json.dumps(fields, default=str)


_JSON_KINDS = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def parse_body(data: bytes) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """Decode a task message body without ever raising.

    :param data: the message body.
    :return: ``(body, None)`` for a JSON object, else ``(None, why)``.
    """
    try:
        body = json.loads(data)
    except RecursionError:
        return None, f"body of {len(data)} bytes is not a task message: JSON nested too deeply"
    except ValueError as exc:  # also UnicodeDecodeError
        return None, f"body of {len(data)} bytes is not JSON: {exc}"
    if not isinstance(body, dict):
        kind = _JSON_KINDS.get(type(body), "value")
        return None, f"body is a JSON {kind}, not a task message object"
    return body, None


def decode(sequence: int, headers: dict[str, str] | None, data: bytes) -> DeadLetter:
    """Turn a stored dead letter into a :class:`DeadLetter`; never raises.

    :param sequence: its sequence in the dead-letter stream.
    :param headers: its NATS headers.
    :param data: its body.
    :return: what could be read of it.
    """
    headers = headers or {}
    body, problem = parse_body(data)
    body = body or {}

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    labels = body.get("labels")
    queue = text(headers.get(QUEUE_HEADER))
    if queue is None and isinstance(labels, dict):
        queue = text(labels.get("queue"))

    def num(key: str, kind: type[int] | type[float]) -> Any:
        try:
            return kind(headers[key])
        except (KeyError, ValueError):
            return None

    return DeadLetter(
        sequence=sequence,
        task_id=text(body.get("task_id")),
        task_name=text(headers.get(TASK_NAME_HEADER)) or text(body.get("task_name")),
        # Sent before queues existed (no header, no label): the default queue.
        queue=queue or DEFAULT_QUEUE,
        reason=text(headers.get(DEAD_LETTER_REASON_HEADER)),
        detail=text(headers.get(DEAD_LETTER_DETAIL_HEADER)),
        deliveries=num(DEAD_LETTER_DELIVERIES_HEADER, int),
        dead_lettered_at=num(DEAD_LETTER_TIME_HEADER, float),
        original_sequence=num(DEAD_LETTER_SEQUENCE_HEADER, int),
        args=body.get("args"),
        kwargs=body.get("kwargs"),
        body_error=problem,
    )


def replay_problem(letter: DeadLetter) -> str | None:
    """Why a dead letter must not go back to the task stream (a worker could never run it).

    :param letter: the decoded dead letter.
    :return: the reason, or None when it can be replayed.
    """
    if letter.body_error is not None:
        return letter.body_error
    if not letter.task_id or not letter.task_name:
        return "body has no task_id or task_name: not a task message"
    if not QUEUE_NAME_PATTERN.fullmatch(letter.queue):
        return f"queue {letter.queue[:64]!r} is not a valid queue name"
    return None


class Outcome(enum.StrEnum):
    """What ``dlq replay`` did with one sequence number."""

    REPLAYED = "replayed"
    REFUSED = "refused"  # not a task message: left in the dead-letter stream
    FAILED = "failed"  # NATS refused a step: left in the dead-letter stream (or see detail)
    NOT_FOUND = "not found"


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of replaying one dead letter."""

    sequence: int
    outcome: Outcome
    detail: str

    def line(self) -> str:
        """One line for the terminal: ``replayed 3: ...``."""
        return f"{self.outcome} {self.sequence}: {self.detail}"


@dataclass
class ReplaySummary:
    """Counts of the outcomes of one ``dlq replay``."""

    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))

    def add(self, result: ReplayResult) -> None:
        """Count one outcome."""
        self.counts[result.outcome] += 1

    @property
    def problems(self) -> int:
        """How many dead letters were not replayed."""
        return sum(n for outcome, n in self.counts.items() if outcome is not Outcome.REPLAYED)

    def line(self) -> str:
        """``replayed 3 message(s); refused 1, failed 0, not found 0``."""
        others = ", ".join(f"{o} {self.counts[o]}" for o in Outcome if o is not Outcome.REPLAYED)
        return f"replayed {self.counts[Outcome.REPLAYED]} message(s); {others}"


def _describe(exc: BaseException) -> str:
    """Describe an exception in a few words, credentials masked."""
    return redact(str(exc) or type(exc).__name__)


class DeadLetterStream:
    """The dead-letter stream of one NATS server, opened by :func:`open_dead_letters`."""

    _SCAN_SUBJECT: ClassVar[str] = ">"

    def __init__(self, settings: Settings, js: JetStreamContext) -> None:
        """Wrap a JetStream context.

        :param settings: kiqstack settings (stream and subject names).
        :param js: an open JetStream context.
        """
        self.settings = settings
        self.js = js
        self.name = settings.nats_dead_letter_stream
        self.count = 0
        self.first_seq = 0
        self.last_seq = 0

    def _where(self) -> str:
        return ", ".join(redact_url(url) for url in self.settings.nats_url)

    def _failure(self, doing: str, exc: BaseException) -> DeadLetterError:
        if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError is one too
            why = f"no answer within {REQUEST_TIMEOUT_SECONDS:g}s"
        else:
            why = _describe(exc)
        return DeadLetterError(problem=f"NATS at {self._where()}: {doing} failed: {why}")

    async def refresh(self) -> None:
        """Read the stream's message count and sequence range.

        :raises DeadLetterError: when the stream does not exist or JetStream does not answer.
        """
        try:
            info = await self.js.stream_info(self.name)
        except NotFoundError:
            raise DeadLetterError(
                problem=f"dead-letter stream {self.name!r} does not exist on NATS at "
                f"{self._where()} (NATS_DEAD_LETTER_STREAM); a kiqstack server or worker creates "
                "it when it starts: check NATS_URL and the stream name"
            ) from None
        except (NoRespondersError, ServiceUnavailableError):
            raise DeadLetterError(
                problem=f"JetStream is not enabled on NATS at {self._where()} (NATS_URL); "
                "kiqstack needs nats-server -js"
            ) from None
        except (NatsError, TimeoutError) as exc:
            raise self._failure(f"describing stream {self.name!r}", exc) from None
        self.count = int(info.state.messages)
        self.first_seq = int(info.state.first_seq)
        self.last_seq = int(info.state.last_seq)

    async def _get(self, sequence: int, *, next_one: bool) -> RawStreamMsg | None:
        """Read the message at ``sequence`` (or the first one after it), None when there is none.

        :raises DeadLetterError: when NATS does not answer.
        """
        try:
            if next_one:
                return await self.js.get_msg(
                    self.name, seq=sequence, subject=self._SCAN_SUBJECT, next=True
                )
            return await self.js.get_msg(self.name, seq=sequence)
        except NotFoundError:
            return None
        except (NatsError, TimeoutError) as exc:
            raise self._failure(
                f"reading sequence {sequence} of stream {self.name!r}", exc
            ) from None

    async def messages(self, limit: int | None = None) -> AsyncIterator[RawStreamMsg]:
        """Yield the stored messages, oldest first, up to the last one stored at the opening.

        Messages dead-lettered while this runs (a replayed message failing again) are not
        included, so a replay of everything always ends.

        :param limit: most messages to yield (None: all).
        """
        if self.count == 0:
            return
        sequence, seen = max(self.first_seq, 1), 0
        while sequence <= self.last_seq and (limit is None or seen < limit):
            msg = await self._get(sequence, next_one=True)
            if msg is None or msg.seq is None or msg.seq > self.last_seq:
                return
            seen += 1
            yield msg
            sequence = msg.seq + 1

    async def letters(self, limit: int | None = None) -> AsyncIterator[DeadLetter]:
        """Yield the dead letters, decoded one by one, oldest first.

        :param limit: most messages to yield (None: all).
        """
        async for msg in self.messages(limit):
            yield decode(int(msg.seq or 0), msg.headers, msg.data or b"")

    async def replay(self, sequences: Iterable[int] | None) -> AsyncIterator[ReplayResult]:
        """Send dead letters back to the task stream, one by one, and remove each one sent.

        A message is removed only after JetStream stored its copy in the task stream. The copy's
        ``Nats-Msg-Id`` is ``<task_id>:replay:<sequence>``, so a second replay of a message whose
        removal failed is dropped by the task stream's duplicate window.

        :param sequences: the sequences to replay, in this order; None replays every message.
        :raises DeadLetterError: when no stream takes the task subject (nothing can be replayed).
        """
        if sequences is None:
            async for msg in self.messages():
                yield await self._replay_one(msg)
            return
        for sequence in dict.fromkeys(sequences):
            found = await self._get(sequence, next_one=False) if sequence > 0 else None
            if found is None:
                yield ReplayResult(
                    sequence, Outcome.NOT_FOUND, f"no such message in stream {self.name!r}"
                )
            else:
                yield await self._replay_one(found)

    async def _replay_one(self, msg: RawStreamMsg) -> ReplayResult:
        sequence = int(msg.seq or 0)
        letter = decode(sequence, msg.headers, msg.data or b"")
        problem = replay_problem(letter)
        if problem is not None:
            return ReplayResult(
                sequence, Outcome.REFUSED, f"{problem}; left in the dead-letter stream"
            )
        what = f"task {letter.task_id} ({letter.task_name})"
        headers = replay_headers(msg.headers, task_id=str(letter.task_id), sequence=sequence)
        headers[QUEUE_HEADER] = letter.queue
        subject = self.settings.queue_subject(letter.queue)
        try:
            ack = await self.js.publish(subject, payload=msg.data or b"", headers=headers)
        except (NoStreamResponseError, NoRespondersError):
            raise DeadLetterError(
                problem=f"no JetStream stream takes subject {subject!r} (NATS_SUBJECT) of queue "
                f"{letter.queue} on NATS at "
                f"{self._where()}: the task stream is missing; start a kiqstack server or worker "
                "once to create it, then replay again"
            ) from None
        except (NatsError, TimeoutError) as exc:
            return ReplayResult(
                sequence,
                Outcome.FAILED,
                f"{what} not sent ({_describe(exc)}); left in the dead-letter stream",
            )
        try:
            await self.js.delete_msg(self.name, sequence)
        except (NatsError, TimeoutError) as exc:
            return ReplayResult(
                sequence,
                Outcome.FAILED,
                f"{what} sent to stream {ack.stream} (sequence {ack.seq}) but not removed from "
                f"the dead-letter stream ({_describe(exc)}); replaying "
                "it again soon is harmless (the duplicate is dropped)",
            )
        return ReplayResult(
            sequence,
            Outcome.REPLAYED,
            f"{what} -> queue {letter.queue}, stream {ack.stream} sequence {ack.seq}",
        )


@asynccontextmanager
async def open_dead_letters(settings: Settings) -> AsyncIterator[DeadLetterStream]:
    """Connect to NATS (two attempts per server, bounded) and open the dead-letter stream.

    :param settings: kiqstack settings.
    :yield: the stream, with its message count and sequence range read.
    :raises DeadLetterError: when NATS cannot be reached or the stream does not exist.
    """
    where = ", ".join(redact_url(url) for url in settings.nats_url)
    failures: list[Exception] = []

    async def remember(exc: Exception) -> None:
        # nats-py's default callback logs a traceback per attempt; a CLI says it once.
        failures.append(exc)

    try:
        client: Client = await asyncio.wait_for(
            nats.connect(
                settings.nats_url,
                name="kiqstack-dlq",
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.5,
                allow_reconnect=False,
                error_cb=remember,
            ),
            timeout=2 * CONNECT_TIMEOUT_SECONDS * len(settings.nats_url) + 5,
        )
    except (NatsError, OSError, TimeoutError) as exc:
        cause = failures[-1] if failures and isinstance(exc, NoServersError) else exc
        raise DeadLetterError(
            problem=f"cannot connect to NATS at {where} (NATS_URL): {_describe(cause)}"
        ) from None
    try:
        stream = DeadLetterStream(settings, client.jetstream(timeout=REQUEST_TIMEOUT_SECONDS))
        await stream.refresh()
        yield stream
    finally:
        await client.close()
