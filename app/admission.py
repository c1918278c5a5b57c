"""What a worker admits: a delivery is checked before taskiq sees it.

taskiq acks and drops a message whose body does not parse, and chokes on labels it cannot read
(an unknown ``ack_type`` leaves the message in flight for ever); a task id is written into log
lines, Redis keys and the result notifications as it is. :func:`check_delivery` refuses all that
with a :class:`RejectedDelivery` whose reason the broker records when it dead-letters the message.
"""

from __future__ import annotations

import math

from taskiq import TaskiqMessage
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.acks import parse_acknowledge_type

from app.retry import describe_error
from app.wire import TASK_ID_PATTERN, TASK_NAME_HEADER

_MAX_TASK_NAME = 256


class RejectedDelivery(Exception):
    """Why a delivery cannot run: a short ``reason`` (a metric label) and a ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        """Create the verdict.

        :param reason: short reason, e.g. ``invalid-label``.
        :param detail: what exactly is wrong.
        """
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_delivery(
    formatter: TaskiqFormatter, data: bytes, header_task_name: str | None
) -> TaskiqMessage:
    """Validate what a worker is about to run; taskiq would drop or choke on what fails here.

    :param formatter: the broker's formatter (reads the body).
    :param data: the message body.
    :param header_task_name: the ``Kiq-Task-Name`` header, if any.
    :return: the parsed message.
    :raises RejectedDelivery: with the reason the message must be dead-lettered.
    """
    try:
        message: TaskiqMessage = formatter.loads(data)
    except Exception as exc:
        raise RejectedDelivery(
            "unparseable", f"not a taskiq message: {describe_error(exc)}"
        ) from None
    task_name = message.task_name
    if header_task_name is not None and header_task_name != task_name:
        raise RejectedDelivery(
            "task-name-mismatch",
            f"header {TASK_NAME_HEADER}={header_task_name!r} but the body names {task_name!r}",
        )
    if not TASK_ID_PATTERN.fullmatch(message.task_id):
        raise RejectedDelivery(
            "invalid-task-id",
            f"task id {message.task_id[:64]!r} is not 1 to 128 letters, digits, '-', '_', '.', ':'",
        )
    if not task_name or len(task_name) > _MAX_TASK_NAME or not task_name.isprintable():
        raise RejectedDelivery("invalid-task-name", f"task name {task_name[:64]!r} is not valid")
    try:
        message.parse_labels()
    except Exception as exc:
        raise RejectedDelivery("invalid-label", f"labels: {describe_error(exc)}") from None
    labels = message.labels
    if labels.get("ack_type") is not None:
        try:
            parse_acknowledge_type(labels["ack_type"])
        except ValueError:
            raise RejectedDelivery(
                "invalid-label", f"label ack_type={str(labels['ack_type'])[:64]!r} is not valid"
            ) from None
    if labels.get("timeout") is not None:
        try:
            timeout = float(labels["timeout"])
        except (TypeError, ValueError):
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise RejectedDelivery(
                "invalid-label",
                f"label timeout={str(labels['timeout'])[:64]!r} is not a positive number",
            )
    return message
