"""What the API knows about registered tasks: their parameters, as a model and a JSON schema."""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    create_model,
)
from taskiq import AsyncBroker, Context, TaskiqState
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq_dependencies.dependency import Dependency

from app.errors import TaskArgumentsError, TaskNotFoundError, describe_errors

_INJECTED_TYPES = (Context, TaskiqState)

# JSON has one number type and true/false: `true` or "7" is no int, but 2 is a float (2.0).
_STRICT: dict[Any, Any] = {int: StrictInt, float: StrictFloat, bool: StrictBool}


def strict_hint(hint: Any) -> Any:
    """Make ``int``, ``float`` and ``bool`` strict in a hint, also inside unions and containers.

    ``int`` refuses ``true``, ``2.5`` and ``"7"``; ``float`` refuses ``true`` and ``"2.5"`` but
    takes ``2``; ``bool`` refuses ``1`` and ``"true"``. Other types keep pydantic's lax rules.

    :param hint: a parameter's type hint.
    :return: the strict hint (the hint itself when nothing changes).
    """
    try:
        if hint in _STRICT:
            return _STRICT[hint]
    except TypeError:  # unhashable hint
        return hint
    origin, args = get_origin(hint), get_args(hint)
    if not args or origin is Literal:
        return hint
    try:
        if origin is Annotated:
            inner = strict_hint(args[0])
            return hint if inner is args[0] else Annotated[(inner, *hint.__metadata__)]
        strict_args = tuple(strict_hint(arg) for arg in args)
        if all(new is old for new, old in zip(strict_args, args, strict=True)):
            return hint
        if origin in (Union, types.UnionType):
            return Union[strict_args]  # noqa: UP007 - built from a tuple
        return origin[strict_args] if len(strict_args) > 1 else origin[strict_args[0]]
    except TypeError:  # a generic that cannot be rebuilt: keep it as it is
        return hint


@dataclass(frozen=True)
class TaskSpec:
    """A registered task as the API sees it."""

    name: str
    task: AsyncTaskiqDecoratedTask[Any, Any]
    signature: inspect.Signature
    model: type[BaseModel]
    doc: str | None

    def json_schema(self) -> dict[str, Any]:
        """JSON schema of the task's parameters."""
        return self.model.model_json_schema()

    def validate(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Check arguments against the signature and the type hints, before anything is queued.

        :param args: positional arguments.
        :param kwargs: keyword arguments.
        :raises TaskArgumentsError: naming the problem.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TaskArgumentsError(task_name=self.name, problem=str(exc)) from None
        try:
            self.model.model_validate(bound.arguments)
        except ValidationError as exc:
            problem = describe_errors(exc.errors(), "arguments")
            raise TaskArgumentsError(task_name=self.name, problem=problem) from None


def _is_injected(param: inspect.Parameter, hint: Any) -> bool:
    if isinstance(param.default, Dependency):
        return True
    if get_origin(hint) is Annotated:  # Annotated[Context, TaskiqDepends()]
        if any(isinstance(meta, Dependency) for meta in hint.__metadata__):
            return True
        hint = get_args(hint)[0]
    return isinstance(hint, type) and issubclass(hint, _INJECTED_TYPES)


def _spec(name: str, task: AsyncTaskiqDecoratedTask[Any, Any]) -> TaskSpec:
    func = task.original_func
    full = inspect.signature(func)
    try:
        hints = get_type_hints(func, include_extras=True)
    except Exception:
        hints = {}
    params = []
    fields: dict[str, Any] = {}
    extra: Literal["allow", "forbid"] = "forbid"
    for param in full.parameters.values():
        hint = hints.get(param.name, Any)
        if _is_injected(param, hint):
            continue
        params.append(param)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (strict_hint(hint), default)
    model = create_model(
        f"{name.rsplit(':', 1)[-1]}_arguments",
        __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True),
        **fields,
    )
    return TaskSpec(
        name=name,
        task=task,
        signature=full.replace(parameters=params),
        model=model,
        doc=inspect.getdoc(func),
    )


class TaskCatalog:
    """Registered tasks of a broker, introspected once and cached."""

    def __init__(self, broker: AsyncBroker) -> None:
        """Create a catalog.

        :param broker: the broker whose tasks are served.
        """
        self.broker = broker
        self._specs: dict[str, TaskSpec] = {}

    def get(self, name: str) -> TaskSpec:
        """Look a task up by name.

        :raises TaskNotFoundError: when no such task is registered.
        """
        spec = self._specs.get(name)
        if spec is None:
            task = self.broker.find_task(name)
            if task is None:
                raise TaskNotFoundError(task_name=name)
            spec = self._specs[name] = _spec(name, task)
        return spec

    def all(self) -> list[TaskSpec]:
        """All registered tasks, sorted by name."""
        return [self.get(name) for name in sorted(self.broker.get_all_tasks())]
