"""``/docs`` and ``/redoc`` work offline: they name no other host and their assets are served."""

from __future__ import annotations

import re

import httpx
import pytest

from app.api.docs import ASSETS_URL

pytestmark = pytest.mark.integration

# Every URL a page loads: src/href attributes, Swagger UI's `url:` and ReDoc's `spec-url`.
URL_ATTRIBUTE = re.compile(r"""(?:src|href|spec-url)="([^"]*)"|url: '([^']*)'""")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def _loaded_urls(html: str) -> list[str]:
    return [a or b for a, b in URL_ATTRIBUTE.findall(html)]


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
async def test_docs_page_loads_only_local_assets(
    client: httpx.AsyncClient, page: str, assets: set[str]
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # No scheme and no protocol-relative URL anywhere: nothing is fetched from another host.
    assert re.search(r"https?:|//[\w.-]+\.\w", html) is None, html
    urls = _loaded_urls(html)
    assert "/openapi.json" in urls
    assert {url.removeprefix(f"{ASSETS_URL}/") for url in urls if url.startswith(ASSETS_URL)} == (
        assets
    )
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
        suffix = url[url.rfind(".") :]
        if suffix in CONTENT_TYPES:
            assert CONTENT_TYPES[suffix] in asset.headers["content-type"], url


async def test_swagger_ui_makes_no_validator_calls(client: httpx.AsyncClient) -> None:
    html = (await client.get("/docs")).text
    assert '"validatorUrl": null' in html


async def test_oauth2_redirect_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "oauth2" in response.text.lower()


async def test_assets_stay_inside_their_directory(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{ASSETS_URL}/no-such-file.js")).status_code == 404
    assert (await client.get(f"{ASSETS_URL}/..%2F..%2Fpyproject.toml")).status_code == 404


async def test_docs_pages_stay_out_of_the_schema(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert not [path for path in spec["paths"] if path.startswith(("/docs", "/redoc"))]


async def test_docs_honour_root_path(app) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/kiq")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        html = (await client.get("/docs")).text
    assert "url: '/kiq/openapi.json'" in html
    assert f'src="/kiq{ASSETS_URL}/swagger-ui-bundle.js"' in html
