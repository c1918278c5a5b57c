"""``python -m app`` / ``kiqstack``: start a role, or manage dead letters."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from app import __version__
from app.config import RunMode, Settings, load_settings
from app.errors import ConfigError

_DESCRIPTION = """\
kiqstack: Python background tasks on NATS JetStream with results in Redis.

Without a command, starts the role named by RUN_MODE (server, worker, both or
scheduler).
Configuration comes from environment variables (NATS_URL, REDIS_URL, ...);
see the README's settings table.

Ports: the server's API (and /docs) on $PORT (8000); /metrics, /livez and /readyz
of each role on $METRICS_PORT (9000), never on the API port. With RUN_MODE=both
the worker keeps $METRICS_PORT and the server's move to $METRICS_PORT + 1.
"""

_EPILOG = """\
examples:
  RUN_MODE=worker {prog}      start a worker
  {prog} server               start the API on $PORT (8000),
                              metrics and probes on $METRICS_PORT (9000)
  {prog} scheduler            keep the periodic schedules of TASK_MODULES in NATS
  {prog} dlq list             show dead-lettered messages, one JSON line each
  {prog} dlq replay 3 4       send dead letters 3 and 4 back to their queues
  {prog} dlq replay --all     send every dead letter back to its queue

exit status: 0 done, 1 failed (the message says why), 2 bad configuration or
usage, 130 interrupted.
"""

_LIST_EPILOG = """\
One JSON object per line, printed as each message is read: sequence, task_id,
task_name, queue, reason, deliveries, dead_lettered_at, original_sequence, args, kwargs,
body_error (why the body could not be decoded; null for a task message), detail
(what a delivery check found wrong, for the validation reasons).
"""

_REPLAY_EPILOG = """\
Each task goes back to its own queue's subject (the queue dlq list shows).
Prints one line per dead letter as it goes (replayed, refused: not a task
message, failed: NATS refused a step, not found), then a summary. A message is
removed from the dead-letter stream only once the task stream stored its copy;
refused and failed messages stay. Exit status 1 if any was not replayed.
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def program_name(argv0: str | None = None) -> str:
    """Tell the name this program was started as, for usage lines.

    :param argv0: ``sys.argv[0]`` (default: the real one).
    :return: ``python -m app`` for the package's ``__main__``, else the command's own name
        (``kiqstack`` for the console script).
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0)
    if not name or name == "__main__.py":
        return "python -m app"
    return name


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_EPILOG.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kiqstack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("server", help="serve the HTTP API (uvicorn)")
    sub.add_parser("worker", help="run the taskiq worker (exec; SIGTERM drains it)")
    sub.add_parser(
        "both",
        help="run server and worker as two supervised processes (SIGTERM/SIGINT stop both); "
        "the server also runs the scheduler",
    )
    sub.add_parser(
        "scheduler",
        help="keep the periodic schedules of TASK_MODULES in NATS",
        description="Keep the periodic schedules declared in TASK_MODULES (@periodic, "
        "register_task(schedule=...)) as JetStream schedule definitions: write a missing or "
        "changed one (compare-and-set), delete one no longer declared, then check every "
        "SCHEDULER_INTERVAL_SECONDS. NATS fires the ticks itself: one run per tick with any "
        "number of schedulers, and ticks continue while none runs; ticks missed while NATS is "
        "down are coalesced into one run. Probes and metrics on METRICS_PORT (/livez, /readyz, "
        "/metrics).",
    )
    dlq = sub.add_parser(
        "dlq",
        help="inspect or replay the dead-letter stream (NATS_DEAD_LETTER_STREAM)",
        description="Inspect or replay the dead-letter stream (NATS_DEAD_LETTER_STREAM) "
        "on NATS_URL.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    listing = dlq_sub.add_parser(
        "list",
        help="print dead letters as JSON lines, oldest first",
        description="Print dead letters as JSON lines, oldest first.",
        epilog=_LIST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument(
        "--limit", type=_positive, default=100, help="most messages to print (default 100)"
    )
    replay = dlq_sub.add_parser(
        "replay",
        help="send dead letters back to the task stream and remove them",
        description="Send dead letters back to their queues in the task stream, and remove them.",
        epilog=_REPLAY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "sequences",
        nargs="*",
        type=_positive,
        default=[],
        metavar="SEQUENCE",
        help="sequence numbers, as `dlq list` shows them",
    )
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    return parser


def _run_role(mode: RunMode, settings: Settings) -> int:
    from app import runner

    if mode is RunMode.SERVER:
        return runner.run_server(settings)
    if mode is RunMode.WORKER:
        return runner.run_worker(settings)
    if mode is RunMode.SCHEDULER:
        return runner.run_scheduler(settings)
    return runner.run_both(settings)


def _say(line: str) -> None:
    print(line, flush=True)  # noqa: T201


def _note(message: str) -> None:
    print(f"kiqstack: {message}", file=sys.stderr, flush=True)  # noqa: T201


async def _dlq_list(settings: Settings, limit: int) -> int:
    from app.deadletter import open_dead_letters

    async with open_dead_letters(settings) as stream:
        shown = 0
        async for letter in stream.letters(limit):
            _say(letter.as_json())
            shown += 1
        if stream.count > shown:
            _note(f"showed {shown} of {stream.count} dead letters (--limit {limit})")
    return 0


async def _dlq_replay(settings: Settings, sequences: list[int] | None) -> int:
    from app.deadletter import DeadLetterError, ReplaySummary, open_dead_letters

    summary = ReplaySummary()
    try:
        async with open_dead_letters(settings) as stream:
            async for result in stream.replay(sequences):
                _say(result.line())
                summary.add(result)
    except DeadLetterError:
        if sum(summary.counts.values()):
            _say(f"stopped after: {summary.line()}")
        raise
    _say(summary.line())
    if summary.problems:
        _note(f"{summary.problems} dead letter(s) not replayed (see the lines above)")
        return 1
    return 0


def _run_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from app.deadletter import DeadLetterError

    try:
        if args.dlq_command == "list":
            return asyncio.run(_dlq_list(settings, args.limit))
        return asyncio.run(_dlq_replay(settings, None if args.all else list(args.sequences)))
    except DeadLetterError as exc:
        _note(exc.detail)
        return 1
    except KeyboardInterrupt:
        _note("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`dlq list | head`): stop quietly, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse the command line and run.

    :param argv: arguments (default: ``sys.argv[1:]``).
    :param prog: program name for usage lines (default: :func:`program_name`).
    :return: exit code.
    """
    args = _parser(prog or program_name()).parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        valid = ", ".join(mode.value for mode in RunMode)
        hint = f" (valid RUN_MODE values: {valid})" if "RUN_MODE" in exc.detail else ""
        print(f"kiqstack: {exc.detail}{hint}", file=sys.stderr)  # noqa: T201
        return 2
    if args.command == "dlq":
        return _run_dlq(args, settings)
    mode = RunMode(args.command) if args.command else settings.run_mode
    return _run_role(mode, settings)
