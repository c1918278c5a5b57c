"""A task module only some test workers import (to play a rolling deploy)."""

from app.tasks.broker import register_task


@register_task(task_name="tests.new_feature")
async def new_feature(x: int) -> int:
    """A task that old workers do not know yet."""
    return x * 10
