"""The seed's task API: ``register_task``, names, the example tasks."""

from __future__ import annotations

import pytest

from app.errors import TaskArgumentsError, TaskNotFoundError
from app.registry import TaskCatalog
from app.tasks import example
from app.tasks.broker import broker, register_task


def test_default_name_is_module_and_function() -> None:
    assert example.example_task.task_name == "app.tasks.example:example_task"
    assert broker.find_task("app.tasks.example:risky_task") is example.risky_task


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
    spec.validate([], {"arg1": "x", "arg2": "2"})  # the worker coerces "2" like pydantic does
    with pytest.raises(TaskArgumentsError, match="missing a required argument: 'arg2'"):
        spec.validate(["x"], {})
    with pytest.raises(TaskArgumentsError, match=r"arg2: Input should be a valid integer"):
        spec.validate(["x", "two"], {})
    with pytest.raises(TaskNotFoundError, match="unknown task 'nope'"):
        catalog.get("nope")
    names = [s.name for s in catalog.all()]
    assert names == sorted(names)
    assert "app.tasks.example:cpu_burn" in names
