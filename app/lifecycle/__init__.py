"""A task's life beyond one run: retries, delayed and periodic dispatch, cancellation, progress.

Delayed tasks, retries and periodic schedules are JetStream message schedules: definitions stored
in the task stream on ``NATS_SCHEDULE_SUBJECT.>`` that the NATS server fires itself
(:mod:`.definitions`), so nothing is held in a process's memory. What the status API shows between
dispatch and result (``scheduled``, ``retrying``, progress, a cancel request) is kept in Redis next
to the result (:mod:`.state`).
"""
