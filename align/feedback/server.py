"""The local web server behind `align label` and `align arena`: one static page and a small JSON API.

FastAPI rather than gradio: two fixed pages need no component framework, the API is what the headless
tests drive, and the dependency stays small. The server binds 127.0.0.1 unless told otherwise; bound to
anything else (or given annotators) every API call needs a token (`?token=` or an `X-Align-Token`
header, 401 without a valid one), and a judgement is stored under the annotator its token names.

    GET  /            the page
    GET  /api/next    the next unjudged item (or {"finished": true} with the final figures)
    POST /api/judge   record a judgement; returns progress (and, in the arena, the running win rate)

A judgement body is a typed model (`LabelJudgement`, `ArenaVote`): a wrong type or an unknown field gets
422, a judgement that does not fit the item (a ranking that is not a permutation, an item judged) 400, a
body over 64 KiB 413; no request reaches a 500. There is no /docs or /openapi.json.
"""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the string annotations here
from pydantic import ValidationError

from align.errors import AlignError
from align.feedback.tasks import FeedbackTask

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 64 * 1024  # a judgement is a few hundred bytes


def access_tokens(host: str, annotators: list[str], default: str) -> dict[str, str] | None:
    """Token -> annotator: one per annotator, or one for the run when bound off loopback; None (no
    tokens) for this machine only with no annotators named."""
    if not annotators and host in LOOPBACK:
        return None
    return {secrets.token_urlsafe(16): name for name in annotators or [default]}


def create_app(task: FeedbackTask, page: str, tokens: dict[str, str] | None = None) -> Any:
    from fastapi import Body, Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    html = resources.files("align.feedback").joinpath("static", page).read_text(encoding="utf-8")
    app = FastAPI(title="align feedback", docs_url=None, redoc_url=None, openapi_url=None)

    def annotator(request: Request) -> str | None:
        """The annotator the request's token names (401 without a valid one, when tokens are on)."""
        if tokens is None:
            return None
        token = request.query_params.get("token") or request.headers.get("x-align-token", "")
        match = next((name for known, name in tokens.items() if secrets.compare_digest(known, token)), None)
        if match is None:
            raise HTTPException(
                status_code=401, detail="a valid token is needed (the link the server printed)"
            )
        return match

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html

    @app.get("/api/next")
    def next_item(who: str | None = Depends(annotator)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        return task.next_payload(who)

    @app.post("/api/judge")
    def judge(
        payload: Any = Body(...),  # noqa: B008 - FastAPI's idiom
        who: str | None = Depends(annotator),  # noqa: B008
    ) -> dict[str, Any]:
        try:
            judgement = task.judgement.model_validate(payload)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "body"
            raise HTTPException(status_code=422, detail=f"judgement: {where}: {error['msg']}") from None
        try:
            return task.submit(judgement.model_dump(), who)
        except AlignError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    @app.middleware("http")
    async def bounded_body(request: Request, call_next: Any) -> Any:
        """A body over MAX_BODY_BYTES is refused with 413 before it is parsed."""
        from fastapi.responses import JSONResponse

        declared = request.headers.get("content-length")
        too_long = declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES)
        if too_long or len(await request.body()) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    return app


def serve(task: FeedbackTask, page: str, host: str, port: int, tokens: dict[str, str] | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(task, page, tokens), host=host, port=port, log_level="warning")
