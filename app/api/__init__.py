"""HTTP API routers, included directly by the app (no nesting: routing stays cheap)."""

from app.api import health, tasks

routers = [health.router, tasks.router]

__all__ = ["routers"]
