"""A task module that reports which web-stack modules its worker process has imported."""

import sys

from app.lean_imports import WEB_STACK, is_loaded
from app.tasks.broker import register_task


@register_task(task_name="tests.web_stack_loaded")
async def web_stack_loaded() -> list[str]:
    """Name the modules of :data:`app.lean_imports.WEB_STACK` this process really imported."""
    return [name for name in WEB_STACK if is_loaded(name)] + [
        name for name in sys.modules if name.startswith(("fastapi.", "starlette.", "uvicorn."))
    ]
