"""`/docs` and `/redoc` work offline: the pages name no other host, and every file they load
comes from this server."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from serverkit import InProcessServer

MakeServer = Callable[..., InProcessServer]

_URL = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_names_no_other_host_and_its_files_load(
    model_dir: Path, make_server: MakeServer, page: str
) -> None:
    server = make_server(model_dir)
    r = server.client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html, html
    assert "fonts.googleapis" not in html
    references = _URL.findall(html)
    assert "/openapi.json" in references, references
    assets = [ref for ref in references if ref.startswith("/docs/assets/")]
    assert any(ref.endswith(".js") for ref in assets), references
    for ref in references:
        assert ref.startswith("/"), ref  # this server, no other
        loaded = server.client.get(ref)
        assert loaded.status_code == 200, (ref, loaded.status_code)
        assert len(loaded.content) > 1000, (ref, len(loaded.content))
    if page == "/docs":
        assert '"validatorUrl": null' in html  # no badge fetched from an online validator
        css = server.client.get("/docs/assets/swagger-ui.css")
        assert css.headers["content-type"].startswith("text/css")


def test_an_unknown_docs_asset_is_a_404(model_dir: Path, make_server: MakeServer) -> None:
    server = make_server(model_dir)
    for name in ("nothing.js", "..%2F..%2Fpyproject.toml", "core.py"):
        r = server.client.get(f"/docs/assets/{name}")
        assert r.status_code == 404, (name, r.status_code)
