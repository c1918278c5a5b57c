"""Wire rules (app.wire) and the topology kiqstack asks for (app.jetstream.topology)."""

from __future__ import annotations

from nats.js.api import RetentionPolicy, StreamConfig

from app.config import Settings
from app.jetstream.topology import Topology, stream_problems, task_stream_subjects
from app.wire import (
    DEAD_LETTER_DETAIL_HEADER,
    DEAD_LETTER_HEADERS,
    DEAD_LETTER_REASON_HEADER,
    MSG_ID_HEADER,
    TASK_ID_PATTERN,
    TASK_NAME_HEADER,
    dead_letter_headers,
    message_size,
    pull_subject,
    replay_headers,
)


def test_dead_letter_headers_keep_the_original_ones_without_the_message_id() -> None:
    original = {TASK_NAME_HEADER: "t", MSG_ID_HEADER: "id-1", DEAD_LETTER_REASON_HEADER: "old"}
    headers = dead_letter_headers(
        original, reason="max-deliver", detail="  two\n lines ", deliveries=6, sequence=9, at=1.5
    )
    assert headers[TASK_NAME_HEADER] == "t"
    assert MSG_ID_HEADER not in headers
    assert headers[DEAD_LETTER_REASON_HEADER] == "max-deliver"  # the old record replaced
    assert headers[DEAD_LETTER_DETAIL_HEADER] == "two lines"
    assert headers["Kiq-Deliveries"] == "6"
    assert headers["Kiq-Stream-Sequence"] == "9"
    assert headers["Kiq-Dead-Lettered-At"] == "1.500"
    long = dead_letter_headers(None, reason="r", detail="x" * 2000, deliveries=1, sequence=1, at=0)
    assert len(long[DEAD_LETTER_DETAIL_HEADER]) == 512
    assert DEAD_LETTER_DETAIL_HEADER not in dead_letter_headers(
        None, reason="r", detail="", deliveries=1, sequence=1, at=0
    )


def test_replay_headers_drop_the_dead_letter_record() -> None:
    stored = dead_letter_headers(
        {TASK_NAME_HEADER: "t"}, reason="r", detail="d", deliveries=1, sequence=2, at=0
    )
    headers = replay_headers(stored, task_id="abc", sequence=7)
    assert not set(headers) & DEAD_LETTER_HEADERS
    assert headers == {TASK_NAME_HEADER: "t", MSG_ID_HEADER: "abc:replay:7"}


def test_sizes_subjects_and_ids() -> None:
    assert message_size(b"12345", {"a": "bc"}) == 5 + 1 + 2 + 4 + 64
    assert pull_subject("s", "c") == "$JS.API.CONSUMER.MSG.NEXT.s.c"
    assert TASK_ID_PATTERN.fullmatch("abc-1_2.3:4")
    assert not TASK_ID_PATTERN.fullmatch("a b")
    assert not TASK_ID_PATTERN.fullmatch("x" * 129)


def test_topology_of_the_settings(settings: Settings) -> None:
    topology = Topology(settings)
    tasks = topology.task_stream_config()
    assert tasks.retention == RetentionPolicy.WORK_QUEUE
    assert tasks.subjects == [
        settings.nats_subject,
        f"{settings.nats_subject}.*",
        f"{settings.nats_schedule_subject}.>",
    ]
    assert tasks.subjects == task_stream_subjects(settings)
    assert tasks.allow_msg_schedules is True
    assert not tasks.max_age
    assert tasks.duplicate_window == 120
    dead = topology.dead_letter_stream_config()
    assert dead.retention == RetentionPolicy.LIMITS
    assert dead.max_age == settings.dead_letter_max_age_seconds
    [consumer] = topology.consumer_configs()
    assert consumer.durable_name == settings.nats_consumer
    assert consumer.filter_subject == settings.nats_subject  # never a schedule definition
    assert consumer.max_deliver == settings.max_deliver + 1
    assert consumer.ack_wait == settings.ack_wait_seconds
    assert topology.consumer_names() == [settings.nats_consumer]


def test_every_queue_has_its_subject_and_consumer(settings: Settings) -> None:
    queued = settings.model_copy(update={"worker_queues": ["cpu", "io"]})
    topology = Topology(queued)
    assert topology.queues == ["default", "cpu", "io"]
    assert topology.served_queues == ["cpu", "io"]
    base, consumer = settings.nats_subject, settings.nats_consumer
    assert [(c.durable_name, c.filter_subject) for c in topology.consumer_configs()] == [
        (consumer, base),
        (f"{consumer}_cpu", f"{base}.cpu"),
        (f"{consumer}_io", f"{base}.io"),
    ]
    # A worker relies on the default consumer and its own queues' (readiness checks them).
    assert topology.consumer_names() == [consumer, f"{consumer}_cpu", f"{consumer}_io"]
    assert topology.add_queue("gpu") is True
    assert topology.add_queue("gpu") is False
    assert topology.consumer_configs()[-1].filter_subject == f"{base}.gpu"
    assert queued.worker_slots == 2 * settings.worker_concurrency


def test_stream_problems() -> None:
    wanted = StreamConfig(name="s", subjects=["a"], retention=RetentionPolicy.WORK_QUEUE)
    assert stream_problems(wanted, wanted) == []
    have = StreamConfig(name="s", subjects=["a", "b"], retention=RetentionPolicy.LIMITS)
    assert stream_problems(have, wanted) == [
        "retention is limits, kiqstack needs workqueue",
        "subjects are ['a', 'b'], kiqstack needs ['a']",
    ]
    # Fewer subjects than wanted (a release without queues): updated in place, no problem.
    older = StreamConfig(name="s", subjects=["a"], retention=RetentionPolicy.WORK_QUEUE)
    newer = StreamConfig(name="s", subjects=["a", "a.*"], retention=RetentionPolicy.WORK_QUEUE)
    assert stream_problems(older, newer) == []
