"""The local web server behind `align label` and `align arena`: one static page and a small JSON API.

FastAPI rather than gradio: two fixed pages need no component framework, the API is what the headless
tests drive, and the dependency stays small. The server binds 127.0.0.1 unless told otherwise.

    GET  /            the page
    GET  /api/next    the next unjudged item (or {"finished": true} with the final figures)
    POST /api/judge   record a judgement; returns progress (and, in the arena, the running win rate)
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from align.errors import AlignError
from align.feedback.tasks import FeedbackTask


def create_app(task: FeedbackTask, page: str) -> Any:
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    html = resources.files("align.feedback").joinpath("static", page).read_text(encoding="utf-8")
    app = FastAPI(title="align feedback", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html

    @app.get("/api/next")
    def next_item() -> dict[str, Any]:
        return task.next_payload()

    @app.post("/api/judge")
    def judge(payload: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        try:
            return task.submit(payload)
        except AlignError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    return app


def serve(task: FeedbackTask, page: str, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(task, page), host=host, port=port, log_level="warning")
