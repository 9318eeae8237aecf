"""``GET /`` (the console's page) and ``/console/...`` (its built scripts, styles and fonts)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
BUILT = STATIC / "dist" / "app.js"

# Everything from this origin: a script, style or font from anywhere else is refused by the browser. Styles
# allow 'unsafe-inline' because the charting library positions its parts with style attributes.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>finetune console</title>
<p>The console is not built. <code>make install</code> builds it (Node.js and npm), or
<code>cd console &amp;&amp; npm ci &amp;&amp; npm run build</code>. The API is at <a href="/docs">/docs</a>.</p>
"""

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def console_page() -> HTMLResponse:
    if not BUILT.is_file():
        return HTMLResponse(NOT_BUILT, status_code=503)
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}
    return HTMLResponse((STATIC / "index.html").read_text(), headers=headers)


def mount_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=STATIC, check_dir=False), name="console")
