"""Task arguments are checked strictly where the hint is int, float or bool (JSON has no casts)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import Field

from app.errors import TaskArgumentsError
from app.registry import TaskCatalog
from app.tasks.broker import broker, register_task


@pytest.fixture(scope="module")
def catalog():
    @register_task(task_name="tests.strict")
    async def strict(
        count: int,
        ratio: float,
        flag: bool,
        either: int | float,
        maybe: int | None = None,
        counts: list[int] | None = None,
        weights: dict[str, float] | None = None,
        bounded: Annotated[int, Field(ge=1, le=5)] = 1,
        anything: Any = None,
        name: str = "",
    ) -> None:
        """A task with every kind of hint."""

    yield TaskCatalog(broker)
    broker.local_task_registry.pop("tests.strict", None)


GOOD: dict[str, Any] = {"count": 1, "ratio": 0.5, "flag": True, "either": 2}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"ratio": 2},  # an int where a float is expected: JSON has one number type
        {"either": 2.5},
        {"maybe": None},
        {"maybe": 3},
        {"counts": [1, 2]},
        {"weights": {"a": 1, "b": 0.5}},
        {"bounded": 5},
        {"anything": "7"},  # Any stays Any
    ],
)
def test_accepted(catalog: TaskCatalog, extra: dict[str, Any]) -> None:
    catalog.get("tests.strict").validate([], {**GOOD, **extra})


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"count": True}, "count: Input should be a valid integer"),
        ({"count": "7"}, "count: Input should be a valid integer"),
        ({"count": 7.5}, "count: Input should be a valid integer"),
        ({"count": 7.0}, "count: Input should be a valid integer"),
        ({"ratio": True}, "ratio: Input should be a valid number"),
        ({"ratio": "0.5"}, "ratio: Input should be a valid number"),
        ({"flag": 1}, "flag: Input should be a valid boolean"),
        ({"flag": "true"}, "flag: Input should be a valid boolean"),
        ({"either": True}, "either"),
        ({"maybe": "3"}, "maybe"),
        ({"counts": [1, True]}, "counts.1"),
        ({"weights": {"a": "1"}}, "weights.a"),
        ({"bounded": 6}, "bounded: Input should be less than or equal to 5"),
        ({"name": 5}, "name: Input should be a valid string"),
    ],
)
def test_refused(catalog: TaskCatalog, extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TaskArgumentsError) as info:
        catalog.get("tests.strict").validate([], {**GOOD, **extra})
    assert fragment in info.value.detail
