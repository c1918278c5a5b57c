"""kiqstack's exception tree: one root, one class per failure, one message template each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar


def describe_errors(errors: Iterable[Mapping[str, Any]], where: str) -> str:
    """One line naming each validation problem: ``loc.path: message; ...``.

    :param errors: pydantic's ``ValidationError.errors()``.
    :param where: the name used when an error has no location.
    :return: the problems, joined with ``; ``.
    """
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or where}: {err['msg']}" for err in errors
    )


class AppError(Exception):
    """Root of every error kiqstack raises on purpose."""

    status_code: ClassVar[int] = 500
    template: ClassVar[str] = "internal error"

    def __init__(self, detail: str | None = None, **context: Any) -> None:
        """Create the error.

        :param detail: the message (default: :attr:`template` filled in with ``context``).
        :param context: values for the template.
        """
        self.detail = detail if detail is not None else self.template.format(**context)
        self.context = context
        super().__init__(self.detail)


class ConfigError(AppError):
    """A setting has a bad value."""

    template = "invalid configuration"


class TaskNotFoundError(AppError):
    """No task is registered under this name."""

    status_code = 404
    template = "unknown task {task_name!r}"


class TaskArgumentsError(AppError):
    """The arguments do not fit the task's signature."""

    status_code = 422
    template = "invalid arguments for task {task_name!r}: {problem}"


class PayloadTooLargeError(AppError):
    """A request body or task message is over the size limit."""

    status_code = 413
    template = "payload of {size} bytes exceeds the limit of {limit} bytes"


class InvalidRequestError(AppError):
    """The request cannot be understood."""

    status_code = 422
    template = "{problem}"


class UnsupportedMediaTypeError(AppError):
    """A request body that is not declared as JSON."""

    status_code = 415
    template = "{problem}"


class ClientDisconnectedError(AppError):
    """The client went away before its request was read (nginx's 499; nobody sees the answer)."""

    status_code = 499
    template = "client closed the connection before the request body was read"


class IdempotencyKeyReusedError(AppError):
    """An ``Idempotency-Key`` came back with another task or other arguments."""

    status_code = 422
    template = (
        "Idempotency-Key {key!r} was used for {first} with other arguments within the "
        "idempotency window; use a new key for a different request"
    )


class IdempotencyUnconfirmedError(AppError):
    """A retry came too late to re-send a dispatch whose outcome is unknown."""

    status_code = 409
    template = (
        "Idempotency-Key {key!r}: the first dispatch (task {task_id}) was never confirmed by NATS "
        "and is older than the duplicate window ({window:g}s), so sending it again could run it "
        "twice; GET /tasks/{task_id} shows whether it ran, or dispatch with a new key"
    )


class UnauthorizedError(AppError):
    """The bearer token is missing or wrong."""

    status_code = 401
    template = "missing or invalid bearer token"


class ResultNotFoundError(AppError):
    """No task with this id was dispatched (or its result expired)."""

    status_code = 404
    template = "no task with id {task_id!r} (never dispatched, or its result expired)"


class DispatchError(AppError):
    """The task could not be queued."""

    status_code = 503
    template = "task could not be queued: {reason}"


class DispatchUnconfirmedError(DispatchError):
    """NATS did not confirm the message in time: it may or may not be queued."""

    template = (
        "NATS did not confirm the task in time ({reason}): it may or may not be queued; "
        "retry with the same Idempotency-Key to be sure it runs once"
    )


class StreamConfigError(AppError):
    """An existing JetStream stream or consumer is configured incompatibly."""

    template = "{problem}"


class NatsUnavailableError(AppError):
    """NATS could not be reached in time (the message names ``NATS_URL``, never a password)."""

    status_code = 503
    template = (
        "could not connect to NATS at {urls} within {seconds:g}s ({problem}); check NATS_URL and "
        "that the NATS server runs (NATS_CONNECT_TIMEOUT_SECONDS bounds this wait)"
    )


class InvalidTaskIdError(AppError):
    """A task id that could corrupt logs, Redis keys or the result notifications."""

    status_code = 422
    template = "invalid task id {task_id!r}: use 1 to 128 letters, digits, '-', '_', '.' or ':'"


class InvalidQueueError(AppError, ValueError):
    """A queue name that cannot be a subject token and a consumer name."""

    status_code = 422
    template = (
        "invalid queue name {queue!r}: use 1 to 32 lower-case letters, digits, '_' or '-', "
        "starting with a letter or a digit"
    )


class TaskFinishedError(AppError):
    """The task already has a result: it can no longer be cancelled."""

    status_code = 409
    template = "task {task_id!r} already finished ({status}): it cannot be cancelled"


class ScheduleError(AppError):
    """A delay, an ETA or a periodic schedule that cannot be used."""

    status_code = 422
    template = "{problem}"


class TaskCancelledError(Exception):
    """Raised inside a task that was cancelled (its result then reads ``cancelled``).

    A task that checks :meth:`app.lifecycle.cancel.Cancellation.raise_if_cancelled` ends with it;
    a worker that finds a queued task cancelled stores it as the task's result without running it.
    """
