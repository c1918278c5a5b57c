"""``python -m app`` / ``kiqstack``: start a role, or manage dead letters."""

from __future__ import annotations

import argparse
import asyncio
import sys

from app import __version__
from app.config import RunMode, Settings, load_settings
from app.errors import ConfigError

_DESCRIPTION = """\
kiqstack: Python background tasks on NATS JetStream with results in Redis.

Without a command, starts the role named by RUN_MODE (server, worker or both).
Configuration comes from environment variables (NATS_URL, REDIS_URL, ...);
see the README's settings table.

Ports: the server's API (and /docs) on $PORT (8000); /metrics, /livez and /readyz
of each role on $METRICS_PORT (9000), never on the API port. With RUN_MODE=both
the worker keeps $METRICS_PORT and the server's move to $METRICS_PORT + 1.
"""

_EPILOG = """\
examples:
  RUN_MODE=worker python -m app      start a worker
  python -m app server               start the API on $PORT (8000),
                                     metrics and probes on $METRICS_PORT (9000)
  python -m app dlq list             show dead-lettered messages
  python -m app dlq replay --all     send every dead letter back to the task stream
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kiqstack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("server", help="serve the HTTP API (uvicorn)")
    sub.add_parser("worker", help="run the taskiq worker (exec; SIGTERM drains it)")
    sub.add_parser("both", help="run server and worker in one container, supervised")
    dlq = sub.add_parser("dlq", help="inspect or replay the dead-letter stream")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    listing = dlq_sub.add_parser("list", help="print dead letters as JSON lines")
    listing.add_argument("--limit", type=int, default=100, help="most messages (default 100)")
    replay = dlq_sub.add_parser(
        "replay", help="send dead letters back to the task stream and remove them"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("sequences", nargs="*", type=int, default=[], help="sequence numbers")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    return parser


def _run_role(mode: RunMode, settings: Settings) -> int:
    from app import runner

    if mode is RunMode.SERVER:
        return runner.run_server(settings)
    if mode is RunMode.WORKER:
        return runner.run_worker(settings)
    return runner.run_both(settings)


def _run_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from app import deadletter

    if args.dlq_command == "list":
        for letter in asyncio.run(deadletter.list_dead_letters(settings, args.limit)):
            print(deadletter.as_json(letter))  # noqa: T201
        return 0
    sequences = None if args.all else list(args.sequences)
    replayed = asyncio.run(deadletter.replay_dead_letters(settings, sequences))
    print(f"replayed {len(replayed)} message(s): {replayed}")  # noqa: T201
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run.

    :param argv: arguments (default: ``sys.argv[1:]``).
    :return: exit code.
    """
    args = _parser().parse_args(argv)
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
