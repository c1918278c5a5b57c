"""The worker entry point imports no web framework (a regression guard on memory, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from app import lean_imports

# What `python -m app worker` does before its worker processes fork (app.runner.run_worker), then
# what each worker process imports (taskiq's start_listen: the broker, the task modules, the
# receiver), with the example tasks and the built-in ones.
_WORKER_ENTRY = textwrap.dedent(
    """
    import json, sys
    from app import runner
    from app.config import Settings
    from app.lean_imports import WEB_STACK, is_loaded

    args = runner.worker_args(Settings(task_modules=["app.tasks.example"]))
    from taskiq.cli.utils import import_object, import_tasks
    from taskiq.cli.worker.run import start_listen  # noqa: F401
    from taskiq.receiver import Receiver  # noqa: F401

    broker = import_object(args.broker)
    broker.is_worker_process = True
    import_tasks(args.modules, args.tasks_pattern, args.fs_discover)
    loaded = [name for name in WEB_STACK if is_loaded(name)]
    loaded += [n for n in sys.modules if n.startswith(("fastapi.", "starlette.", "uvicorn."))]
    print(json.dumps({"loaded": loaded, "tasks": sorted(broker.get_all_tasks())}))
    """
)


def _run(code: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_worker_entry_imports_no_web_stack() -> None:
    result = _run(_WORKER_ENTRY)
    assert "app.tasks.example:add" in result["tasks"]  # the worker did import its tasks
    assert result["loaded"] == []


def test_guard_would_catch_a_web_import() -> None:
    # The same check, in a process that imports the API: it sees FastAPI and Starlette.
    result = _run(_WORKER_ENTRY.replace("import json, sys", "import json, sys, app.main"))
    assert {"fastapi", "starlette"} <= set(result["loaded"])


@pytest.mark.parametrize("name", lean_imports.WEB_STACK)
def test_web_stack_names_are_real_modules(name: str) -> None:
    # A renamed package would make the guard vacuous.
    import importlib.util

    assert importlib.util.find_spec(name) is not None


def test_deferred_aiohttp_and_fastapi_depends_still_work() -> None:
    code = textwrap.dedent(
        """
        import json, sys
        from app.lean_imports import keep_web_stack_out, is_loaded
        keep_web_stack_out()
        import taskiq
        from taskiq.middlewares import TaskiqAdminMiddleware
        before = [is_loaded("aiohttp"), is_loaded("fastapi")]
        import importlib.util
        assert importlib.util.find_spec("aiohttp").name == "aiohttp"  # optional-dependency checks
        assert not is_loaded("aiohttp")
        from taskiq_dependencies import DependencyGraph
        from fastapi import Depends

        def dep() -> int:
            return 7

        def task(x: int = Depends(dep)) -> int:
            return x

        graph = DependencyGraph(task)
        import aiohttp
        ok = aiohttp.ClientSession.__name__ == "ClientSession" and is_loaded("aiohttp")
        with graph.sync_ctx() as ctx:
            deps = ctx.resolve_kwargs()
        print(json.dumps({"loaded": before, "fastapi_dep": deps, "aiohttp": [ok]}))
        """
    )
    result = _run(code)
    assert result["loaded"] == [False, False]
    assert result["fastapi_dep"] == {"x": 7}  # FastAPI's Depends still resolved in a task signature
    assert result["aiohttp"] == [True]  # the deferred module became the real one
