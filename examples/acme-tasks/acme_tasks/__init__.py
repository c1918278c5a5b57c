"""Example kiqstack task package: ``TASK_MODULES=acme_tasks.tasks`` registers its tasks."""
