"""The worker's part of the lifecycle: the cancel check before a run, the retry after a failure.

:func:`install` adds both to a broker's :class:`app.delivery.DeliveryPipeline`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from redis.exceptions import RedisError
from taskiq import TaskiqMessage

from app import metrics
from app.delivery import Action, DeliveryPipeline, Refusal
from app.lifecycle.cancel import store_cancelled
from app.lifecycle.definitions import due_in, rfc3339
from app.lifecycle.retries import attempt_of, count_retry, retry_message, take_plan
from app.retry import describe_error

if TYPE_CHECKING:
    from app.broker import KiqBroker

logger = logging.getLogger("kiqstack.worker")


def install(pipeline: DeliveryPipeline, broker: KiqBroker) -> None:
    """Check every delivery's cancel flag before it runs, and send the retries of failed runs.

    :param pipeline: the worker's delivery pipeline.
    :param broker: the broker (its results and transport).
    """

    async def cancelled(msg: Msg, message: TaskiqMessage) -> Refusal | None:
        try:
            return await check(msg, message)
        except RedisError as exc:
            # Redis is restarting (or a pooled connection went stale with it): the task comes
            # back after REDELIVERY_DELAY_SECONDS, as when its result cannot be saved, rather than
            # after ACK_WAIT_SECONDS.
            logger.warning(
                "task %s (%s): cannot read its cancel flag (%s); giving it back",
                message.task_id,
                message.task_name,
                describe_error(exc),
            )
            return Refusal(Action.GIVE_BACK, "result-store-unavailable")

    async def check(msg: Msg, message: TaskiqMessage) -> Refusal | None:
        results = broker.results
        if msg.metadata.num_delivered > 1 and await retry_already_scheduled(message):
            # The worker scheduled the retry of this run, then crashed before its ack.
            logger.info(
                "task %s (%s): attempt %d already failed and its retry is scheduled; not run again",
                message.task_id,
                message.task_name,
                attempt_of(message),
            )
            return Refusal(Action.DROP, "retry-scheduled")
        if not await results.lifecycle.cancel_requested(message.task_id):
            return None
        if not await results.is_result_ready(message.task_id):
            await store_cancelled(results, message.task_id, message.task_name)
        metrics.TASKS_CANCELLED.labels(message.task_name).inc()
        logger.info("task %s (%s) was cancelled: not run", message.task_id, message.task_name)
        return Refusal(Action.DROP, "cancelled")

    async def retry(msg: Msg) -> bool:
        plan = take_plan()
        if plan is None:
            return False
        results = broker.results
        task_id = plan.message.task_id
        try:
            if await results.lifecycle.cancel_requested(task_id):
                await store_cancelled(results, task_id, plan.message.task_name)
                return False  # acked: cancelled instead of retried
            subject, body, headers = retry_message(msg, plan, broker.settings)
            await results.lifecycle.set_state(
                task_id,
                {
                    "status": "retrying",
                    "attempt": plan.next_attempt,
                    "max_retries": plan.max_retries,
                    "last_error": {"type": plan.error_type, "message": plan.error_message},
                    "eta": rfc3339(due_in(plan.delay)),
                },
            )
            await broker.transport.publish(subject, body, headers)
        except Exception as exc:
            logger.error(
                "could not schedule the retry of task %s (%s); the delivery is given back and "
                "this attempt runs again",
                task_id,
                describe_error(exc),
            )
            pipeline.inflight.release(msg)
            await pipeline.give_back(msg, "retry-not-scheduled")
            return True
        count_retry(plan)
        return False  # the pipeline acks the failed delivery

    async def retry_already_scheduled(message: TaskiqMessage) -> bool:
        state = await broker.results.lifecycle.read_state(message.task_id)
        if not state or state.get("status") != "retrying":
            return False
        return int(state.get("attempt", 0)) > attempt_of(message)

    pipeline.add_check(cancelled)
    pipeline.add_settler(retry)
