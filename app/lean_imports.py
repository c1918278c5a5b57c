"""Keep the web stack out of worker processes: what taskiq imports that a worker never uses.

``import taskiq`` loads FastAPI (``taskiq_dependencies.graph`` imports ``fastapi.params`` whenever
FastAPI is installed, to recognise FastAPI's ``Depends`` in task signatures) and aiohttp (every
middleware is imported by ``taskiq/__init__``, the admin middleware imports aiohttp; nats-py's
websocket transport imports it too). In a worker that is about 25 MB of resident memory and
200 ms of start-up for code it never runs. :func:`keep_web_stack_out` is called by
``python -m app worker`` before taskiq is imported; the server role does not call it.

Nothing changes for a task:

* FastAPI's ``Depends`` is still recognised in a task signature: ``taskiq_dependencies`` gets a
  stand-in class whose ``isinstance`` check asks ``fastapi.params.Depends`` once FastAPI has been
  imported (an object can only be one if it has);
* aiohttp is a deferred module: the first attribute anyone reads imports the real one (the admin
  middleware or a ``ws://`` NATS URL still work, they just pay for aiohttp then). The admin
  middleware module is compiled with postponed annotations, so defining its class reads nothing
  from aiohttp.
"""

from __future__ import annotations
import __future__

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

#: Modules a worker process must not import (checked by ``tests/unit/test_lean_imports.py``).
WEB_STACK = ("fastapi", "starlette", "uvicorn", "aiohttp")

_ADMIN_MIDDLEWARE = "taskiq.middlewares.taskiq_admin_middleware"


class _DeferredModule(types.ModuleType):
    """A module that imports the real one on the first attribute read."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        # Modules that imported the stand-in keep it: give it the real module's contents.
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def _defer(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec(name)
    if spec is not None:
        deferred = _DeferredModule(name)
        deferred.__spec__ = spec  # importlib.util.find_spec(name) answers as for the real one
        sys.modules[name] = deferred


class _PostponedAnnotationsLoader(importlib.machinery.SourceFileLoader):
    """Compile a module from source as if it began with ``from __future__ import annotations``."""

    def get_code(self, fullname: str) -> types.CodeType:
        """Compile the source (never the cached bytecode, which evaluates annotations)."""
        source = self.get_data(self.path)
        flags = __future__.annotations.compiler_flag
        code: types.CodeType = compile(source, self.path, "exec", flags=flags, dont_inherit=True)
        return code


class _AdminMiddlewareFinder(importlib.abc.MetaPathFinder):
    """Find taskiq's admin middleware with :class:`_PostponedAnnotationsLoader`."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        """Return the admin middleware's spec with the postponed-annotations loader."""
        if fullname != _ADMIN_MIDDLEWARE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return spec
        spec.loader = _PostponedAnnotationsLoader(fullname, spec.origin)
        return spec


class _FastapiDependsType(type):
    def __instancecheck__(cls, instance: Any) -> bool:
        params = sys.modules.get("fastapi.params")
        return params is not None and isinstance(instance, params.Depends)


class FastapiDepends(metaclass=_FastapiDependsType):
    """Stand for ``fastapi.params.Depends`` in ``taskiq_dependencies``; FastAPI stays unloaded."""


def _import_dependencies_without_fastapi() -> None:
    if "taskiq_dependencies.graph" in sys.modules or "fastapi" in sys.modules:
        return
    sys.modules["fastapi"] = None  # type: ignore[assignment] # makes `import fastapi` fail
    try:
        graph = importlib.import_module("taskiq_dependencies.graph")
    finally:
        del sys.modules["fastapi"]
    graph.FastapiDepends = FastapiDepends  # type: ignore[attr-defined]


def keep_web_stack_out() -> None:
    """Import taskiq without FastAPI and aiohttp (call before anything imports taskiq).

    Does nothing for what is already imported, so it is safe to call more than once.
    """
    if not any(isinstance(finder, _AdminMiddlewareFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AdminMiddlewareFinder())
    _defer("aiohttp")
    _import_dependencies_without_fastapi()


def is_loaded(name: str) -> bool:
    """Tell whether a module has really been imported (a deferred stand-in does not count).

    :param name: module name.
    """
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, _DeferredModule)
