"""Chart.yaml metadata for chart repositories and Artifact Hub: links, icon, maintainers, images."""

from __future__ import annotations

import tomllib
from urllib.parse import urlparse

import pytest
import yaml

from tests.chart.chartlib import CHART_DIR

pytestmark = pytest.mark.chart

REPO = CHART_DIR.parent
META = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())


def _https(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme == "https" and bool(parsed.netloc) and " " not in url


def test_home_sources_icon_maintainers() -> None:
    assert _https(META["home"])
    assert META["sources"]
    assert all(_https(url) for url in META["sources"])
    assert META["home"] in META["sources"]
    assert _https(META["icon"])
    assert META["icon"].endswith((".svg", ".png"))
    # The icon is a file of this repository, at the same path as in the URL.
    assert (REPO / META["icon"].split("/main/", 1)[1]).is_file()
    assert META["maintainers"]
    for maintainer in META["maintainers"]:
        assert maintainer["name"]
        assert _https(maintainer.get("url", "https://x"))


def test_artifacthub_annotations() -> None:
    annotations = META["annotations"]
    assert set(annotations) <= {
        "artifacthub.io/license",
        "artifacthub.io/category",
        "artifacthub.io/images",
        "artifacthub.io/links",
    }
    license_expression = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert annotations["artifacthub.io/license"] == license_expression
    # One of Artifact Hub's fixed categories.
    assert annotations["artifacthub.io/category"] in {
        "ai-machine-learning",
        "database",
        "integration-delivery",
        "monitoring-logging",
        "networking",
        "security",
        "storage",
        "streaming-messaging",
    }
    links = yaml.safe_load(annotations["artifacthub.io/links"])
    assert {"source", "documentation"} <= {link["name"] for link in links}
    for link in links:
        assert _https(link["url"])
        if "/blob/main/" in link["url"]:
            assert (REPO / link["url"].split("/blob/main/", 1)[1]).is_file(), link


def test_artifacthub_images_are_what_the_chart_runs() -> None:
    """The listed image is the default image.repository at appVersion (the default tag)."""
    images = yaml.safe_load(META["annotations"]["artifacthub.io/images"])
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["image"]["tag"] == ""  # the default tag is the chart's appVersion
    assert images == [
        {"name": "kiqstack", "image": f"{values['image']['repository']}:{META['appVersion']}"}
    ]
