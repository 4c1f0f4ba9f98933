"""The blind review web app of `tunewise review serve`: one page (HTML, CSS and script in one file, nothing fetched
from elsewhere) and a small JSON API over `ReviewStore`.

    GET  /                the page
    POST /api/join        {name} -> {name, token}: a new reviewer (409 when the name is taken)
    GET  /api/state       the reviewer's progress and next item (answers as "left" and "right" only)
    POST /api/choice      {position, choice, comment} (409 when that item already has the reviewer's choice)
    POST /api/undo        take back the reviewer's last choice

The reviewer's token travels in the `X-Reviewer` header. Off loopback the API also needs an API key of
`tunewise keys create` (`Authorization: Bearer KEY`), checked as `tunewise serve` checks it; the page asks for it.
No response names an arm, a run or a model.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from tunewise.project import Project
from tunewise.review.store import ReviewError, ReviewStore
from tunewise.serve.auth import KeyStore, require_key
from tunewise.serve.errors import APIError


class JoinRequest(BaseModel):
    name: str = Field(max_length=200)


class ChoiceRequest(BaseModel):
    position: int
    choice: str = Field(max_length=20)
    comment: str | None = Field(default=None, max_length=4000)


def page_html() -> str:
    return resources.files("tunewise.review").joinpath("page.html").read_text(encoding="utf-8")


def create_app(project: Project, review_id: str, *, no_auth: bool = True) -> FastAPI:
    """The app for one review. `no_auth`: the API needs no key (loopback only; `cli.serve` checks the host)."""
    store = ReviewStore(project)
    store.get(review_id)  # an unknown review stops here, before the server starts

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            app.state.keys.close()

    app = FastAPI(title="tunewise review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.no_auth = no_auth
    app.state.keys = KeyStore(Path(project.state_dir) / "registry.sqlite3")
    app.state.store = store
    app.state.review_id = review_id

    @app.exception_handler(ReviewError)
    async def _review_error(request: Request, exc: ReviewError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "hint": None}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-store"})

    app.include_router(api)
    return app


api = APIRouter(prefix="/api", dependencies=[Depends(require_key)])


def _ctx(request: Request) -> tuple[ReviewStore, str, str]:
    return request.app.state.store, request.app.state.review_id, request.headers.get("x-reviewer", "")


@api.post("/join")
def join(body: JoinRequest, request: Request) -> dict[str, Any]:
    store, review_id, _ = _ctx(request)
    return store.join(review_id, body.name)


@api.get("/state")
def state(request: Request) -> dict[str, Any]:
    store, review_id, token = _ctx(request)
    return store.state(review_id, token)


@api.post("/choice")
def choice(body: ChoiceRequest, request: Request) -> dict[str, Any]:
    store, review_id, token = _ctx(request)
    return store.choose(review_id, token, body.position, body.choice, body.comment)


@api.post("/undo")
def undo(request: Request) -> dict[str, Any]:
    store, review_id, token = _ctx(request)
    return store.undo(review_id, token)


def make_server(project: Project, review_id: str, sock: Any, *, no_auth: bool = True) -> Any:
    """A uvicorn server for the review app on an already bound socket (`server.run(sockets=[sock])`)."""
    import uvicorn

    app = create_app(project, review_id, no_auth=no_auth)
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
