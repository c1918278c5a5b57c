"""Task modules. ``app.tasks.broker`` holds the broker and ``register_task``."""
