"""What every page of the web UI shares: templates and their filters, rendering whole pages or
only their refreshing parts, the login form, and sending a browser without a key to it.

Pages are server-rendered Jinja2 that read the store directly, as the API's routes do; the
little JavaScript in `static/ui.js` refreshes the parts marked `data-refresh` by fetching the
same URL with `X-Ostinato-Fragment: 1` (the server then renders only the page's `content`
block), tails logs, and sends the buttons' and forms' requests to the API.

The UI's routes pass the same `authorize` as the API (GET: a `read` key): a browser presents its
key as the `ostinato_key` cookie the login form sets, HTTP-only and SameSite=Strict.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ostinato.deploy.errors import Unauthorized
from ostinato.scheduler.auth import KEY_COOKIE, Public, authenticate_key
from ostinato.scheduler.ui.timing import ServerTiming

HERE = Path(__file__).resolve().parent  # the source folder itself under an editable install
FRAGMENT_HEADER = "x-ostinato-fragment"
REFRESH_SECONDS = 5.0
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def when(value: datetime | str | None) -> str:
    """A time as compact UTC, `2030-01-31 02:00:00`; `-` for none."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    """A duration for people: `850 ms`, `12.3 s`, `4m 05s`, `2h 10m`."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes}m {rest:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


templates.env.filters["when"] = when
templates.env.filters["seconds"] = seconds


def render(request: Request, template: str, *, title: str, **context: Any) -> HTMLResponse:
    """The page, or with the fragment header only its `content` block (for refreshes)."""
    fragment = request.headers.get(FRAGMENT_HEADER) == "1"
    return templates.TemplateResponse(request, template, {
        "title": title, "fragment": fragment, "refresh": REFRESH_SECONDS, **context})


def _safe_next(target: str) -> str:
    """Only a path on this server: a login link cannot send the browser elsewhere."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse, dependencies=[Public])
def login_form(request: Request, target: Annotated[str, Query(alias="next")] = "/"
               ) -> HTMLResponse:
    return render(request, "login.html", title="Log in", next=_safe_next(target), error=None)


@router.post("/login", response_class=HTMLResponse, dependencies=[Public])
async def log_in(request: Request) -> Response:
    """Check the key, then keep it in the cookie the UI's requests carry."""
    form = parse_qs((await request.body()).decode(errors="replace"))
    key = form.get("key", [""])[0].strip()
    target = _safe_next(form.get("next", ["/"])[0])
    try:
        authenticate_key(request, key)
    except Unauthorized as exc:
        page = render(request, "login.html", title="Log in", next=target, error=exc.message)
        page.status_code = 401
        return page
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout", dependencies=[Public])
def log_out() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/")
    return response


def _is_page(request: Request) -> bool:
    path = request.url.path
    return request.method == "GET" and not (path.startswith("/api") or path == "/metrics")


async def _to_login(request: Request, exc: Exception) -> Response:
    """A browser without a (valid) key goes to the login form; API clients get the 401."""
    assert isinstance(exc, Unauthorized)
    if _is_page(request):
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return RedirectResponse(f"/login?next={target}", status_code=303)
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.message})


def install(app: FastAPI, *routers: APIRouter) -> None:
    """Serve the UI's pages, the login form and the static files of `app`."""
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(Unauthorized, _to_login)
    app.add_middleware(ServerTiming)  # each page says how long the server took
    for page_router in (router, *routers):
        app.include_router(page_router)
