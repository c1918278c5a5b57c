"""The seed's task API: ``register_task``, names, the example tasks."""

from __future__ import annotations

import pytest

from app.errors import TaskArgumentsError, TaskNotFoundError
from app.registry import TaskCatalog
from app.tasks import example
from app.tasks.broker import broker, register_task


def test_default_name_is_module_and_function() -> None:
    @register_task()
    async def unnamed() -> None:
        pass

    try:
        assert unnamed.task_name == f"{__name__}:unnamed"
    finally:
        broker.local_task_registry.pop(unnamed.task_name, None)


def test_example_names_are_pinned() -> None:
    # Explicit task_name= equal to the historical module:function names: moving the module never
    # orphans a queued message.
    import inspect

    source = inspect.getsource(example)
    for name in ("example_task", "risky_task", "add", "noop", "sleep_task", "cpu_burn"):
        full = f"app.tasks.example:{name}"
        assert f'@register_task(task_name="{full}"' in source
        assert broker.find_task(full) is getattr(example, name)


def test_builtin_tasks_are_always_registered() -> None:
    from app.tasks import builtin

    # Registered by importing the broker module, whatever TASK_MODULES says.
    assert broker.find_task(builtin.PING).original_func is builtin.ping
    assert broker.find_task(builtin.ECHO).original_func is builtin.echo
    builtin.register_builtin_tasks(broker)  # idempotent


async def test_builtin_tasks_run_inline() -> None:
    from app.tasks import builtin

    assert await builtin.ping() == "pong"
    assert await builtin.echo({"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}


@pytest.mark.parametrize(
    ("name", "args", "fragment"),
    [
        ("app.tasks.example:cpu_burn", [600], "less than or equal to 10"),
        ("app.tasks.example:cpu_burn", [-1], "greater than or equal to 0"),
        ("app.tasks.example:sleep_task", [3600], "less than or equal to 60"),
    ],
)
def test_costly_examples_are_bounded_before_queueing(name, args, fragment) -> None:
    with pytest.raises(TaskArgumentsError, match=fragment):
        TaskCatalog(broker).get(name).validate(args, {})
    # Called directly (not through the API), the task checks its bound itself.
    import asyncio

    def direct() -> object:
        if name.endswith("cpu_burn"):
            return example.cpu_burn(args[0])
        return asyncio.run(example.sleep_task(args[0]))

    with pytest.raises(ValueError, match="seconds must be between 0 and"):
        direct()


def test_task_name_overrides() -> None:
    @register_task(task_name="custom_name", timeout=5)
    async def my_task() -> None:
        pass

    try:
        assert my_task.task_name == "custom_name"
        assert my_task.labels == {"timeout": 5}
        assert broker.find_task("custom_name") is my_task
    finally:
        broker.local_task_registry.pop("custom_name", None)


async def test_example_tasks_run_inline() -> None:
    assert await example.example_task("a", 1) == "Processed: a, 1"
    assert await example.add(2, 3) == 5
    assert await example.noop() is None
    assert await example.sleep_task(0) >= 0
    with pytest.raises(ValueError, match="Something went wrong"):
        await example.risky_task()
    assert example.cpu_burn(0.01) >= 1


def test_catalog_validates_before_queueing() -> None:
    catalog = TaskCatalog(broker)
    spec = catalog.get("app.tasks.example:example_task")
    spec.validate(["x", 1], {})
    with pytest.raises(TaskArgumentsError, match="missing a required argument: 'arg2'"):
        spec.validate(["x"], {})
    with pytest.raises(TaskArgumentsError, match=r"arg2: Input should be a valid integer"):
        spec.validate(["x", "two"], {})
    with pytest.raises(TaskNotFoundError, match="unknown task 'nope'"):
        catalog.get("nope")
    names = [s.name for s in catalog.all()]
    assert names == sorted(names)
    assert "app.tasks.example:cpu_burn" in names
