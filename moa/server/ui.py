"""The playground (``moa serve --ui``): one page at ``/ui`` that chats with an ensemble over the public API and
shows each proposer's answer, the aggregator's, a timeline of the calls and their cost.

The page and its assets ship in the package (``moa/server/ui_static/``): nothing comes from a CDN and nothing
is built at install. Every asset goes out with a strict Content-Security-Policy (scripts and styles from this
server only, no inline script, no eval, connections to this server only), so a model's text the page shows can
never run: the script inserts it as text, and the policy would block it even if it did not. The page itself needs
no API key (it holds no data); it asks for one when ``/v1/models`` answers 401 and keeps it for the tab only
(``sessionStorage``).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

#: the URL of the page
UI_PATH = "/ui"
#: asset name -> content type; nothing else under /ui is served
ASSETS = {
    "index.html": "text/html",
    "playground.js": "text/javascript",
    "playground.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
#: the paths that need no API key when the playground is on
UI_PATHS = frozenset({UI_PATH, f"{UI_PATH}/", *(f"{UI_PATH}/{name}" for name in ASSETS)})

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
#: sent with every asset
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> bytes:
    return resources.files("moa.server").joinpath("ui_static", name).read_bytes()


async def page(request: web.Request) -> web.Response:
    return _response("index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return _response(name)


def _response(name: str) -> web.Response:
    return web.Response(body=_asset(name), content_type=ASSETS[name], charset="utf-8", headers=HEADERS)


def register(app: web.Application) -> None:
    """Serve the page at ``/ui`` (and ``/ui/``) and its assets at ``/ui/<name>``."""
    app.router.add_get(UI_PATH, page)
    app.router.add_get(f"{UI_PATH}/", page)
    app.router.add_get(UI_PATH + "/{name}", asset)
