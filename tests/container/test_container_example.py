"""Users' own tasks without forking: examples/acme-tasks built into an image, both supported ways.

1. ``examples/acme-tasks/Dockerfile``: ``FROM`` the freshly built kiqstack image, ``pip install``
   of the package (tagged ``EXAMPLE_IMAGE``, default ``kiqstack/acme-tasks:dev``, as
   ``make example-image`` does, so the e2e suite can deploy it).
2. ``examples/acme-tasks/standalone.Dockerfile``: the user's own image from the base, kiqstack
   installed as a dependency from the wheel and constraints of ``make dist``.

Each runs as a hardened server and worker with ``TASK_MODULES=acme_tasks.tasks`` against real
NATS JetStream and Redis; the package's tasks are dispatched through the HTTP API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from app.tasks.builtin import ECHO, PING
from tests.container.conftest import (
    ROOT,
    BuiltImage,
    Container,
    Containers,
    Docker,
    Services,
    build_image,
    dispatch,
)

pytestmark = pytest.mark.container

EXAMPLE = ROOT / "examples" / "acme-tasks"
ACME_TASKS = {"acme.slugify", "acme.invoice_total", "acme.word_count"}
ENV = {"TASK_MODULES": "acme_tasks.tasks"}
NEEDS_OLD_STARLETTE = """
[build-system]
requires = ["setuptools>=77.0.1"]
build-backend = "setuptools.build_meta"

[project]
name = "needs-old-starlette"
version = "0.1.0"
dependencies = ["starlette<0.30"]

[tool.setuptools]
py-modules = []
"""


@pytest.fixture(scope="module")
def example_image(docker: Docker, image: BuiltImage) -> BuiltImage:
    """examples/acme-tasks/Dockerfile built FROM the kiqstack image under test."""
    tag = os.environ.get("EXAMPLE_IMAGE") or "kiqstack/acme-tasks:dev"
    build_image(docker, EXAMPLE, tag, {"KIQSTACK_IMAGE": image.tag})
    return BuiltImage(tag, image.tag, image.version, image.revision)


@pytest.fixture(scope="module")
def standalone_image(
    docker: Docker, base_image: str, image: BuiltImage, tmp_path_factory: pytest.TempPathFactory
) -> BuiltImage:
    """examples/acme-tasks/standalone.Dockerfile: the base + kiqstack's wheel + the package."""
    context = tmp_path_factory.mktemp("acme-standalone")
    shutil.copytree(
        EXAMPLE,
        context,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    dist = subprocess.run(
        ["make", "--no-print-directory", "dist", f"DIST={context / 'kiqstack-dist'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert dist.returncode == 0, f"make dist failed:\n{dist.stdout}\n{dist.stderr}"
    tag = "kiqstack/acme-tasks-standalone:dev"
    build_image(
        docker, context, tag, {"BASE_IMAGE": base_image}, dockerfile="standalone.Dockerfile"
    )
    return BuiltImage(tag, base_image, image.version, image.revision)


@pytest.fixture(scope="module", params=["from-kiqstack-image", "standalone"])
def acme(
    request: pytest.FixtureRequest, docker: Docker, module_services: Services
) -> Iterator[tuple[Container, Container]]:
    """A server and a worker of one of the two example images, serving only acme_tasks.tasks."""
    name = "example_image" if request.param == "from-kiqstack-image" else "standalone_image"
    made = Containers(docker, request.getfixturevalue(name), module_services)
    try:
        server = made.start("server", env=ENV)
        worker = made.start("worker", env={**ENV, "WORKER_QUEUES": "default,cpu"})
        server.wait_ready(server.api)
        worker.wait_ready(worker.metrics)
        yield server, worker
    finally:
        made.remove_all()


def test_serves_exactly_the_packages_tasks(acme):
    server, _ = acme
    answer = httpx.get(f"{server.api}/tasks", timeout=10)
    assert answer.status_code == 200, answer.text
    tasks = {task["name"]: task for task in answer.json()}
    # kiqstack's built-in tasks (kiqstack.ping, kiqstack.echo) are there whatever TASK_MODULES says
    assert set(tasks) - {PING, ECHO} == ACME_TASKS, (
        "TASK_MODULES=acme_tasks.tasks replaces the example tasks"
    )
    assert set(tasks["acme.invoice_total"]["parameters"]["properties"]) == {
        "quantities",
        "unit_prices",
        "tax_rate",
    }
    assert tasks["acme.slugify"]["description"].startswith("Turn a title into a URL slug")
    missing = dispatch(server.api, "app.tasks.example:add", 1, 2)
    assert missing.status_code == 404, missing.text


def test_tasks_run_and_return_results(acme, wait_status):
    server, _ = acme
    slug = dispatch(server.api, "acme.slugify", "Crème Brûlée: 10 Recipes!", wait=20)
    assert slug.status_code == 200, slug.text
    assert slug.json()["status"] == "success"
    assert slug.json()["result"] == "creme-brulee-10-recipes"

    total = dispatch(
        server.api, "acme.invoice_total", [2, 1], [9.99, 0.5], tax_rate=0.2, wait=20
    ).json()
    assert total["result"] == {"net": 20.48, "tax": 4.1, "gross": 24.58}, total

    queued = dispatch(server.api, "acme.word_count", "the cat and the hat and the bat", top=2)
    assert queued.status_code == 202, queued.text
    status = wait_status(server.api, queued.json()["task_id"])
    assert status["status"] == "success", status
    assert status["task_name"] == "acme.word_count"
    assert status["queue"] == "cpu"
    assert status["result"] == [["the", 3], ["and", 2]]


def test_task_error_is_captured(acme, wait_status):
    server, _ = acme
    answer = dispatch(server.api, "acme.invoice_total", [1, 2, 3], [1.0])
    assert answer.status_code == 202, answer.text
    status = wait_status(server.api, answer.json()["task_id"])
    assert status["status"] == "error", status
    assert status["result"] is None
    assert status["error"] == {
        "type": "ValueError",
        "message": "3 quantities but 1 unit prices: one of each per line",
    }


def test_bad_arguments_are_refused_before_queueing(acme):
    server, _ = acme
    answer = dispatch(server.api, "acme.slugify", "title", max_length="long")
    assert answer.status_code == 422, answer.text
    assert "max_length" in answer.json()["detail"]


def test_worker_metrics_carry_the_task_names(acme, metric_value):
    server, worker = acme
    dispatch(server.api, "acme.slugify", "metrics", wait=20)
    assert metric_value(worker.metrics, "kiqstack_tasks_succeeded_total", task_name="acme.slugify")
    # the server's /metrics is on METRICS_PORT, not on the API port
    assert metric_value(server.metrics, "kiqstack_tasks_dispatched_total", task_name="acme.slugify")


def test_example_image_keeps_kiqstack_image_contract(docker, example_image):
    """Same user, entrypoint and locked kiqstack; the package is in the venv, no source left."""
    config = docker.inspect(example_image.tag)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/app/docker-entrypoint.sh"]
    assert "TASK_MODULES=acme_tasks.tasks" in config["Env"]
    script = (
        "import importlib.metadata as m, acme_tasks; "
        "print(m.version('acme-tasks'), m.version('kiqstack'), m.version('pydantic'), "
        "acme_tasks.__file__.startswith('/opt/venv/'))"
    )
    out = docker.run("run", "--rm", "--entrypoint", "python", example_image.tag, "-c", script)
    acme_version, kiqstack_version, pydantic_version, in_venv = out.stdout.split()
    assert (acme_version, kiqstack_version, in_venv) == ("0.1.0", example_image.version, "True")
    assert f"pydantic=={pydantic_version}" in (ROOT / "pyproject.toml").read_text()
    # The build bind-mounts the package at /src: only the empty mount point stays behind.
    leftovers = docker.run("run", "--rm", "--entrypoint", "find", example_image.tag, "/src")
    assert leftovers.stdout.split() == ["/src"]


def test_derived_build_keeps_kiqstacks_locked_versions(docker, image, tmp_path):
    """A package that needs other versions of kiqstack's dependencies fails the build, with pip's
    reason, instead of silently replacing them (PIP_CONSTRAINT in the kiqstack image)."""
    shutil.copy(EXAMPLE / "Dockerfile", tmp_path / "Dockerfile")
    (tmp_path / "pyproject.toml").write_text(NEEDS_OLD_STARLETTE)
    tag = f"kiqstack/needs-old-starlette:{os.getpid()}"
    proc = build_image(docker, tmp_path, tag, {"KIQSTACK_IMAGE": image.tag}, check=False)
    assert proc.returncode != 0, "the build must refuse starlette<0.30"
    output = proc.stdout + proc.stderr
    assert "starlette" in output
    assert "ResolutionImpossible" in output or "conflict" in output.lower(), output[-3000:]
    assert not docker.image_exists(tag)
