"""``make run``: kiqstack's API and a worker against local NATS JetStream and Redis.

Starts ``nats-server -js`` and ``redis-server`` on free loopback ports, then
``python -m app both``: the API on $PORT (default 8000), never serving ``/metrics``; the worker's
``/metrics``, ``/livez``, ``/readyz`` on $METRICS_PORT (default 9000) and the server's on
$METRICS_PORT + 1 (9001). Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localinfra import local_infra


def main() -> int:
    """Run until interrupted."""
    with local_infra() as (nats, redis):
        env = {
            **os.environ,
            "NATS_URL": f"nats://{nats.host}:{nats.port}",
            "REDIS_URL": f"redis://{redis.host}:{redis.port}/0",
        }
        port = env.setdefault("PORT", "8000")
        metrics = env.get("METRICS_PORT", "9000")
        server_metrics = int(metrics) + 1 if metrics.isdigit() else "$METRICS_PORT+1"
        # No load balancer to drain from locally: Ctrl-C stops at once.
        env.setdefault("SHUTDOWN_DELAY_SECONDS", "0")
        print(
            f"kiqstack: NATS {env['NATS_URL']}, Redis {env['REDIS_URL']}\n"
            f"kiqstack: API on http://127.0.0.1:{port} (docs: /docs)\n"
            f"kiqstack: metrics of the worker on http://127.0.0.1:{metrics}/metrics, "
            f"of the server on http://127.0.0.1:{server_metrics}/metrics\n"
            "Try:\n"
            f"  curl -s -X POST 'http://127.0.0.1:{port}/tasks/app.tasks.example:add?wait=5' "
            "-H 'content-type: application/json' -d '{\"args\": [2, 3]}'\n",
            flush=True,
        )
        app = subprocess.Popen([sys.executable, "-m", "app", "both"], env=env)
        try:
            return app.wait()
        except KeyboardInterrupt:
            app.send_signal(signal.SIGINT)
            return app.wait()


if __name__ == "__main__":
    sys.exit(main())
