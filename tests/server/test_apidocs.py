"""`/docs` works offline: the page references only this server, and every file it references is served."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tests.server.conftest import LiveServer


def test_docs_page_needs_no_other_host(live: LiveServer) -> None:
    with live.client() as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        html = page.text
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
        refs += re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", html)  # what Swagger UI fetches: the spec
        assert refs, html
        foreign = [r for r in refs if urlsplit(r).netloc or r.startswith("//")]
        assert not foreign, f"/docs loads from other hosts: {foreign}"
        assert not re.search(r"https?://", html), "an absolute URL is left in the page (CDN, validator badge)"
        assert "validatorUrl" in html  # Swagger UI would call validator.swagger.io by default
        for ref in refs:
            r = c.get(ref)
            assert r.status_code == 200 and r.content, ref
        assert c.get("/docs/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
        assert "SwaggerUIBundle" in c.get("/docs/swagger-ui-bundle.js").text
        assert c.get("/openapi.json").json()["paths"]
        missing = c.get("/docs/nope.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
