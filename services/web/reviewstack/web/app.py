"""The web page's routes: log in, review a paper (the review streamed as server-sent events), read
reports and compare two systems on a paper.

Pages are rendered on the server; the only script is the one that turns the review's events into the
page (static/review.js). Every form is checked for the session's CSRF token, every field is bounded,
and every failure becomes a page that says what went wrong and what to do, with the right status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import quote

import grpc
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import SecretStr
from starlette.middleware.sessions import SessionMiddleware

from reviewstack.common import errors
from reviewstack.common.aspects import AspectSchema
from reviewstack.common.grpc.auth import TokenSource
from reviewstack.common.logging import get_logger
from reviewstack.common.store import ArtifactStore, open_store
from reviewstack.v1 import evaluation_pb2
from reviewstack.web.access import Access, NotLoggedIn, session_secret
from reviewstack.web.reports import KINDS, Comparisons, check_report, list_reports, report_html
from reviewstack.web.reviews import (
    ReviewJob,
    ReviewJobs,
    ReviewServices,
    UploadRejected,
    check_penalty,
    check_upload,
    final_event,
    stream_review,
)
from reviewstack.web.settings import WebSettings

log = get_logger(__name__)

FORM_ROOM = 64 * 2**10  # the form's other fields beside the paper
# the page's own resources only; inline script and style are refused, so injected markup cannot run
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
# a stored report is served as its writer made it (inline CSS, figures as data: URIs) and may not run
# anything at all, nor be framed
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; sandbox"
_HTTP_STATUS = {
    errors.InvalidArgument: 400,
    errors.NotFound: 404,
    errors.PermissionDenied: 403,
    errors.FailedPrecondition: 409,
    errors.ResourceExhausted: 503,
    errors.Unavailable: 503,
}


class Web:
    """What the routes share: settings, the store, the service clients, the reviews of this process."""

    def __init__(self, settings: WebSettings, store: ArtifactStore | None = None) -> None:
        self.settings = settings
        self.access = Access(settings)
        self.grpc_tokens = TokenSource.of(settings.grpc_token, settings.grpc_token_file, "grpc_token")
        self.store = store if store is not None else open_store(settings.store, settings)
        self.reviews = ReviewServices(settings.review_services, self.grpc_tokens)
        self.comparisons = Comparisons(settings.evaluation_service, self.grpc_tokens)
        self.jobs = ReviewJobs()
        self.in_flight = asyncio.Semaphore(settings.max_reviews_in_flight)
        self.templates = Jinja2Templates(directory=str(files("reviewstack.web") / "templates"))

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.update(
            csrf=Access.csrf_token(request),
            logged_in=self.access.logged_in(request),
            login_mode=self.access.mode,
            systems=list(self.settings.review_services),
            aspects=AspectSchema.SEVEN.aspects,
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def error_page(self, request: Request, status: int, message: str) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"error": message}, status_code=status)
        return self.page(request, "error.html", status=status, message=message, code=status)


def create_app(settings: WebSettings, store: ArtifactStore | None = None) -> FastAPI:
    web = Web(settings, store)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await web.reviews.close()
        await web.comparisons.close()

    app = FastAPI(
        title="review-stack",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # the whole request, before a byte of it is parsed: a larger upload is refused with 413
        max_body_size=settings.max_upload_bytes + FORM_ROOM,
    )
    app.state.web = web
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings),
        session_cookie="reviewstack_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.secure_cookies,
    )
    app.mount("/static", StaticFiles(packages=[("reviewstack.web", "static")]), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if request.url.path not in ("/healthz", "/readyz") and not request.url.path.startswith("/static"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, _: NotLoggedIn) -> Response:
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        return JSONResponse({"error": "log in first: this needs a session (POST /login)"}, status_code=401)

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{e['loc'][-1]}: {e['msg'].lower()}"
            for e in exc.errors()
            if isinstance(e.get("loc"), tuple | list)
        )
        return web.error_page(
            request, 400, f"the form is incomplete or malformed ({problems}); fill it in again"
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return web.error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(errors.ReviewStackError)
    async def user_error(request: Request, exc: errors.ReviewStackError) -> Response:
        return web.error_page(request, _HTTP_STATUS.get(type(exc), 400), str(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        log.error("request failed", path=request.url.path, error=repr(exc), exc_info=exc)
        return web.error_page(request, 500, "something broke on the server; its log says what. Try again.")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:  # browsers ask for it on every page, the stored reports' included
        icon = (files("reviewstack.web") / "static" / "favicon.svg").read_bytes()
        return Response(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    # -- probes ----------------------------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        try:
            await asyncio.wait_for(asyncio.to_thread(web.store.list_dirs, "evaluations/"), timeout=5)
        except Exception as exc:  # the store is down or refuses: not ready, and why
            return JSONResponse({"status": "store unreachable", "error": str(exc)[:300]}, status_code=503)
        return JSONResponse({"status": "ready"})

    # -- login -----------------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> Response:
        if web.access.logged_in(request):
            return RedirectResponse(_local(next), status_code=303)
        return web.page(request, "login.html", next=_local(next))

    @app.post("/login")
    async def login(
        request: Request,
        token: Annotated[SecretStr, Form(max_length=4096)],
        csrf: Annotated[str, Form(max_length=128)] = "",
        next: Annotated[str, Form(max_length=512)] = "/",
    ) -> Response:
        Access.check_csrf(request, csrf)
        if not await web.access.log_in(request, token):
            log.warning("failed login", client=request.client.host if request.client else None)
            return web.page(request, "login.html", status=401, next=_local(next), error="wrong token")
        return RedirectResponse(_local(next), status_code=303)

    @app.post("/logout")
    async def logout(request: Request, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
        Access.check_csrf(request, csrf)
        Access.log_out(request)
        return RedirectResponse("/login", status_code=303)

    # -- reviews ---------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request, session: Session) -> Response:
        return web.page(
            request, "review.html", job=None, recent=web.jobs.of_session(session), limits=_limits(web)
        )

    @app.post("/reviews")
    async def new_review(
        request: Request,
        session: Session,
        paper: Annotated[UploadFile, File()],
        system: Annotated[str, Form(max_length=64)],
        refusal_penalty: Annotated[float, Form()] = 0.0,
        csrf: Annotated[str, Form(max_length=128)] = "",
    ) -> Response:
        penalty = _checked_form(web, request, csrf, system, refusal_penalty)
        try:
            content = await paper.read(settings.max_upload_bytes + 1)
            checked = check_upload(paper.filename, content, settings.max_upload_bytes)
        except UploadRejected as exc:
            return web.error_page(request, exc.status, str(exc))
        finally:
            await paper.close()
        job = web.jobs.add(session, checked, system, penalty)
        log.info(
            "review asked", system=system, refusal_penalty=penalty, paper=checked.filename, bytes=len(content)
        )
        return RedirectResponse(f"/reviews/{job.id}", status_code=303)

    @app.post("/reviews/{job_id}/again")
    async def review_again(
        request: Request,
        session: Session,
        job_id: str,
        system: Annotated[str, Form(max_length=64)],
        refusal_penalty: Annotated[float, Form()] = 0.0,
        csrf: Annotated[str, Form(max_length=128)] = "",
    ) -> Response:
        penalty = _checked_form(web, request, csrf, system, refusal_penalty)
        previous = web.jobs.get(session, job_id)
        job = web.jobs.add(session, previous.paper, system, penalty)
        return RedirectResponse(f"/reviews/{job.id}", status_code=303)

    @app.get("/reviews/{job_id}/events", response_class=EventSourceResponse)
    async def review_events(
        job: Annotated[ReviewJob, Depends(session_job)],
    ) -> AsyncIterator[ServerSentEvent]:
        async for event, data in _events(web, job):
            yield ServerSentEvent(event=event, data=data)

    @app.get("/reviews/{job_id}.json")
    async def review_json(job: Annotated[ReviewJob, Depends(session_job)]) -> Response:
        return Response(
            job.record().to_json(),
            media_type="application/json",
            headers={"Content-Disposition": _attachment(job, "json")},
        )

    @app.get("/reviews/{job_id}.md")
    async def review_markdown(job: Annotated[ReviewJob, Depends(session_job)]) -> Response:
        return Response(
            job.record().to_markdown(),
            media_type="text/markdown; charset=utf-8",
            headers={"Content-Disposition": _attachment(job, "md")},
        )

    # after the downloads: "/reviews/{job_id}" would take "<id>.json" for an id
    @app.get("/reviews/{job_id}", response_class=HTMLResponse)
    async def review_page(
        request: Request, session: Session, job: Annotated[ReviewJob, Depends(session_job)]
    ) -> Response:
        return web.page(
            request, "review.html", job=job, recent=web.jobs.of_session(session), limits=_limits(web)
        )

    # -- reports ---------------------------------------------------------------------------------------
    @app.get("/reports", response_class=HTMLResponse)
    async def reports(request: Request, _: Session) -> Response:
        listed = {kind: await asyncio.to_thread(list_reports, web.store, kind) for kind in KINDS}
        return web.page(request, "reports.html", reports=listed, compare=web.comparisons.enabled)

    @app.get("/reports/{kind}/{report_id}")
    async def report(kind: str, report_id: str, _: Session) -> Response:
        entry = check_report(kind, report_id)
        html = await asyncio.to_thread(report_html, web.store, entry)
        return Response(
            html, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": REPORT_CSP}
        )

    @app.get("/reports/evaluations/{report_id}/compare", response_class=HTMLResponse)
    async def compare(
        request: Request, report_id: str, _: Session, paper: str = "", a: str = "", b: str = ""
    ) -> Response:
        entry = check_report("evaluations", report_id)
        if not web.comparisons.enabled:
            raise errors.FailedPrecondition(
                "comparisons are off: the operator has not given this page an Evaluation service "
                "(REVIEWSTACK_EVALUATION_SERVICE)"
            )
        for name, value in (("paper", paper), ("a", a), ("b", b)):
            if len(value) > 256:
                raise errors.InvalidArgument(f"{name} is longer than 256 characters")
        try:
            result = await web.comparisons.compare(entry.id, paper, a, b)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            status = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}.get(code, 503)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                status = 409
            message = exc.details() or code.name  # type: ignore[attr-defined]
            if status == 503:
                message = f"the Evaluation service cannot answer right now ({message}); try again in a minute"
            return web.error_page(request, status, message)
        return web.page(
            request,
            "compare.html",
            eval_id=entry.id,
            c=result,
            labels=_aspect_labels(),
            columns=[_by_aspect(system) for system in result.compared],
            hit_by=_hit_by(result),
        )

    return app


def session_of(request: Request) -> str:
    """The session id of a logged-in browser. A dependency: it runs before the form is validated or a
    stream starts, so that no session means 401 (or the login page), whatever else is wrong."""
    web: Web = request.app.state.web
    return web.access.require_login(request)


def session_job(request: Request, job_id: str, session: Annotated[str, Depends(session_of)]) -> ReviewJob:
    """The review `job_id` of this browser's session."""
    web: Web = request.app.state.web
    return web.jobs.get(session, job_id)


Session = Annotated[str, Depends(session_of)]


async def _events(web: Web, job: ReviewJob) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The review's events. A finished review is replayed (a reload shows it again); one already being
    streamed to another tab is not started twice."""
    if job.response is not None:
        yield "done", final_event(job)
        return
    if job.error is not None or job.started:
        yield "failed", {"message": job.error or "this review is being written in another tab or window"}
        return
    if web.in_flight.locked():
        yield (
            "failed",
            {
                "message": f"the page is writing {web.settings.max_reviews_in_flight} reviews already; "
                "try again in a minute"
            },
        )
        return
    job.started = True
    try:
        async with web.in_flight:
            yield "started", {"system": job.system, "refusal_penalty": job.refusal_penalty}
            async for event in stream_review(job, web.reviews, web.settings.review_timeout_s):
                yield event
    finally:
        if job.response is None and job.error is None:  # the page was closed mid-review
            job.error = "the page was closed before the review was finished, which stopped it; review again"


def _checked_form(web: Web, request: Request, csrf: str, system: str, refusal_penalty: float) -> float:
    """The review form's settings, each checked (CSRF first: a forged form learns nothing); its λ."""
    Access.check_csrf(request, csrf)
    if system not in web.settings.review_services:
        raise errors.InvalidArgument(
            f"unknown system {system[:64]!r}: pick one of {', '.join(web.settings.review_services)}"
        )
    return check_penalty(refusal_penalty, web.settings.refusal_penalty_max)


def _limits(web: Web) -> dict[str, Any]:
    return {
        "max_upload_mib": round(web.settings.max_upload_bytes / 2**20, 1),
        "max_penalty": web.settings.refusal_penalty_max,
    }


def _local(target: str) -> str:
    """`target` when it is a path of this site, else "/": a login link cannot send anyone elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _attachment(job: ReviewJob, extension: str) -> str:
    def safe(text: str) -> str:
        return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in text)

    stem = safe(job.paper.filename.rsplit(".", 1)[0])[:80]
    return f'attachment; filename="{stem}-review-{safe(job.system)[:32]}.{extension}"'


def _by_aspect(system: evaluation_pb2.SystemOnPaper) -> list[dict[str, Any]]:
    """A system's review as the compare page shows it: its points under their aspects in schema order
    (points of a free-text review under one heading), declined and unwritten aspects said as such."""
    labels = _aspect_labels()
    order = [a.key for a in AspectSchema.SEVEN.aspects] + [a.key for a in AspectSchema.FOUR.aspects]
    groups: dict[str, list[evaluation_pb2.GeneratedPoint]] = {}
    for point in system.points:
        groups.setdefault(point.aspect, []).append(point)
    keys = set(groups) | set(system.empty_aspects) | set(system.missing_aspects)
    rows = []
    for key in sorted(keys, key=lambda k: order.index(k) if k in order else len(order)):
        state = "missing" if key in system.missing_aspects else "declined" if key not in groups else "points"
        label = labels.get(key, key) if key else "Review"
        rows.append({"label": label, "state": state, "points": groups.get(key, [])})
    return rows


def _hit_by(result: evaluation_pb2.PaperComparison) -> dict[int, list[str]]:
    """Human point index → the sides ("A", "B") that hit it."""
    hits: dict[int, list[str]] = {}
    for side, system in zip("AB", result.compared, strict=False):
        for point in system.points:
            if point.hit >= 0 and side not in hits.setdefault(point.hit, []):
                hits[point.hit].append(side)
    return hits


def _aspect_labels() -> dict[str, str]:
    """Aspect key → criterion; where both schemas have a key, the 7-aspect schema's words."""
    return {a.key: a.criterion for schema in (AspectSchema.FOUR, AspectSchema.SEVEN) for a in schema.aspects}
