"""The web console: a FastAPI app over the fleet's log and projections (SPEC §4 ``serve``).

Every ``/api`` route needs ``Authorization: Bearer <token>`` when a token is
set; without one the server binds to loopback only and answers to loopback
host names only (no DNS rebinding). Every error is one JSON line,
``{"error": "..."}``, with a 4xx status for anything a request got wrong and
503 for a fleet or projections that could not answer now.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
# at run time, and some name objects local to ``create_app`` (the bearer scheme).
import datetime
import hmac
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetlog.events.errors import FleetlogError, QueryError
from fleetlog.events.state import SessionStatus, fold

from . import timeline as tl
from .data import Backend, Conflict, NotFound, Unavailable, today_start_utc
from .sqlguard import check_console_sql

__all__ = ["create_app", "STATIC"]

STATIC = Path(__file__).parent / "static"
STATUSES = ("pending", "running", "awaiting_review", "completed", "failed", "cancelled")
Status = SessionStatus
#: Points in an overview chart.
BUCKETS = 40

# --- models ---------------------------------------------------------------------------------


class ApiError(BaseModel):
    """Every error: one line."""

    error: str


class SessionRow(BaseModel):
    id: str
    task_id: str = ""
    status: Status
    agent_type: str
    tenant: str
    step_count: int
    token_count: int
    cost_usd: float
    error: str = ""
    restarts: int = 0


class Review(BaseModel):
    session_id: str
    call_id: str
    tool: str
    input: str
    risk: str
    reason: str
    in_doubt: bool
    call_hash: str
    requested_at: float


class ToolCall(BaseModel):
    call_id: str
    tool: str
    step: int
    status: str
    verdict: str
    risk: str
    reason: str
    in_doubt: bool
    decision: str
    error: str
    input: str
    call_hash: str


class TimelineEvent(BaseModel):
    seq: int
    ts: float
    epoch: int
    type: str
    kind: Literal["session", "model", "tool", "review", "compaction", "limit"]
    summary: str
    lines: list[str]
    data: dict[str, Any]


class SessionDetail(BaseModel):
    session: SessionRow
    info: dict[str, Any]
    tool_calls: list[ToolCall]
    reviews: list[Review]
    events: list[TimelineEvent]


SessionId = Annotated[str, PathParam(min_length=1, max_length=300)]
CallId = Annotated[str, PathParam(min_length=1, max_length=300)]
Reviewer = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Note = Annotated[str, StringConstraints(max_length=10_000)]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reviewer: Reviewer = Field(description="who decides: recorded on the decision")
    note: Note = ""
    call_hash: Annotated[str, StringConstraints(max_length=64)] = Field(
        "",
        description="the hash the queue showed: refuse any other call under this id (after "
        "an edited approval, the hash of either input)",
    )


class Approval(Decision):
    input: dict[str, Any] | None = Field(
        None,
        description="run the call with this input (a JSON object: the tool's arguments) "
        "instead of the model's. It is vetted again (a deny rule still refuses it) and the "
        "model is told; the model's own input is recorded as a plain approval. Not for a "
        "call in doubt after a crash (409).",
    )


class Denial(Decision):
    """A denial takes no ``input``: sending one is a 422, as for any unknown field."""

    end_session: bool = Field(False, description="also end the session (DENIED_BY_REVIEWER)")


class Cancellation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reviewer: Reviewer
    note: Note = ""


class DecisionResult(BaseModel):
    session_id: str
    call_id: str
    decision: Literal["approve", "deny", "cancel"]
    reviewer: str
    recorded_via: Literal["fleet", "log", "already"] = Field(
        description="the running fleet took it, it was appended to the log, or it was "
        "recorded before"
    )
    edited: bool = Field(
        False, description="the call was approved with an input the reviewer edited"
    )


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    limit: int = Field(1000, ge=1, le=10_000, description="rows to return at most")


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    elapsed_ms: float


class MetricsResult(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]]


class TenantBudget(BaseModel):
    tenant: str
    sessions: int
    tokens: int
    cost_usd: float
    max_cost_usd: float | None
    max_tokens: int | None
    cost_share: float | None = Field(description="cost_usd / max_cost_usd")
    token_share: float | None = Field(description="tokens / max_tokens")


class CostPoint(BaseModel):
    t: float
    cost_usd: float
    calls: int


class CompletionPoint(BaseModel):
    t: float
    completed: int
    ended: int
    rate: float


class FleetStatus(BaseModel):
    fleet: str = Field(description="'running at ADDRESS' or 'offline'")
    reviews_pending: int
    home: str


class CallCount(BaseModel):
    verdict: str = Field(description="allow, ask or deny ('' before vetting)")
    status: str
    calls: int


class FailureCount(BaseModel):
    code: str = Field(description="the failure reason (SPEC §3), before the ':'")
    sessions: int


class Overview(BaseModel):
    fleet: str = Field(description="'running at ADDRESS' or 'offline'")
    window: str
    sessions: int
    counts: dict[str, int]
    steps: int
    tokens: int
    cost_usd: float
    cost_today: float
    steps_per_s: float = Field(description="model steps per second over the last minute")
    reviews_pending: int
    tenants: list[TenantBudget]
    tool_calls: list[CallCount]
    failures: list[FailureCount]
    cost_series: list[CostPoint]
    completion_series: list[CompletionPoint]
    bucket_s: dict[str, float]
    generated_at: float


# --- helpers --------------------------------------------------------------------------------


def _json(value: Any) -> Any:
    """Any value a query returns, as JSON (non-finite floats as text, never an error)."""
    from fleetlog.cli import _interval, _jsonable

    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    interval = _interval(value)  # before tuples: Arrow's MonthDayNano is a named tuple
    if interval is not None:
        return interval
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    converted = _jsonable(value)
    if converted is value:
        return str(value)
    return _json(converted)


def _ts(value: datetime.datetime) -> str:
    return f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S.%f}'"


def _since(window: str, name: str = "window") -> datetime.datetime | None:
    from fleetlog.cli import parse_since

    if window in ("", "all"):
        return None
    try:
        since: datetime.datetime = parse_since(window)
    except FleetlogError:
        raise FleetlogError(
            f"{name} {window!r}: give 'all', a duration like 12h or 7d, or a date like 2026-11-01"
        ) from None
    return since


def _series_sql(table: str, column: str, where: str, select: str) -> str:
    return f"""(
        WITH pts AS (SELECT * FROM {table} WHERE {column} IS NOT NULL AND {where}),
        w AS (
            SELECT CASE WHEN count(*) < 2 THEN 1.0
                        ELSE greatest((epoch(max({column})) - epoch(min({column}))) / {BUCKETS},
                                      0.001) END AS w
            FROM pts
        )
        SELECT {{'w': any_value(w.w), 'points': coalesce(list(p ORDER BY p.t), [])}}
        FROM w LEFT JOIN (
            SELECT floor(epoch({column}) / w.w) * w.w AS t, {select}
            FROM pts, w GROUP BY 1
        ) p ON true
    )"""


def overview_sql(since: datetime.datetime | None, now: float) -> str:
    """One read-only statement with everything the overview shows."""
    start = _ts(since) if since else "TIMESTAMP '1970-01-01 00:00:00'"
    utc_now = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(tzinfo=None)
    minute_ago = _ts(utc_now - datetime.timedelta(seconds=60))
    today = _ts(today_start_utc(now))
    cost = _series_sql(
        "model_calls",
        "called_at",
        f"called_at >= {start}",
        "sum(coalesce(cost_usd, 0))::DOUBLE AS cost_usd, count(*) AS calls",
    )
    completion = _series_sql(
        "agent_executions",
        "completed_at",
        f"completed_at >= {start} AND status IN ('completed', 'failed', 'cancelled')",
        "count(*) FILTER (status = 'completed') AS completed, count(*) AS ended",
    )
    return f"""
    SELECT
      (SELECT coalesce(list({{'status': status, 'n': n, 'steps': steps, 'tokens': tokens,
                              'cost': cost}}), [])
       FROM (SELECT status, count(*) AS n, coalesce(sum(step_count), 0) AS steps,
                    coalesce(sum(token_count), 0) AS tokens,
                    coalesce(sum(cost_usd), 0)::DOUBLE AS cost
             FROM agent_executions WHERE created_at >= {start} GROUP BY status)) AS statuses,
      (SELECT coalesce(sum(cost_usd), 0)::DOUBLE FROM model_calls
       WHERE called_at >= {today}) AS cost_today,
      (SELECT count(*) FROM model_calls
       WHERE called_at >= {minute_ago} AND purpose = '') AS steps_last_minute,
      (SELECT coalesce(sum(awaiting_reviews), 0) FROM agent_executions
       WHERE status NOT IN ('completed', 'failed', 'cancelled')) AS reviews_pending,
      (SELECT coalesce(list({{'tenant': tenant, 'sessions': sessions, 'tokens': tokens,
                              'cost': cost}} ORDER BY tenant), [])
       FROM (SELECT tenant, sum(sessions) AS sessions, coalesce(sum(tokens), 0) AS tokens,
                    coalesce(sum(cost_usd), 0)::DOUBLE AS cost
             FROM budget_counters GROUP BY tenant)) AS tenants,
      (SELECT coalesce(list({{'verdict': verdict, 'status': status, 'calls': n}}
                             ORDER BY n DESC, verdict, status), [])
       FROM (SELECT coalesce(c.verdict, '') AS verdict, c.status, count(*) AS n
             FROM agent_tool_calls c JOIN agent_executions x ON c.execution_id = x.id
             WHERE x.created_at >= {start} GROUP BY ALL)) AS tool_calls,
      (SELECT coalesce(list({{'code': code, 'sessions': n}} ORDER BY n DESC, code), [])
       FROM (SELECT split_part(error, ':', 1) AS code, count(*) AS n FROM agent_executions
             WHERE status = 'failed' AND created_at >= {start} GROUP BY 1)) AS failures,
      {cost} AS cost_series,
      {completion} AS completion_series
    """


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "error"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = list(exc.errors())
    if not errors:
        return 422, "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return 400, "the body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    return 422, f"{where}: {first.get('msg', 'invalid')}"


# --- the app --------------------------------------------------------------------------------

E = dict[int | str, dict[str, Any]]


def _errors(*codes: int) -> E:
    texts = {
        400: "bad input (bad SQL, a refused statement, malformed JSON)",
        401: "a bearer token is required",
        404: "no such session or tool call",
        409: "the decision cannot apply to the call as it is now",
        422: "the request does not match the schema",
        503: "the fleet or the projections could not answer now",
    }
    return {c: {"model": ApiError, "description": texts[c]} for c in codes}


def create_app(
    home: Path, config_path: str | None, token: str | None, address: str | None = None
) -> FastAPI:
    """The console over the fleet in ``home``. ``token``: required as a bearer token, if set."""
    backend = Backend(Path(home), config_path, address)
    backend.config()  # a bad config file is one line now, not a 503 on every request
    token = token or None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        backend.close()

    app = FastAPI(
        title="fleetlog console",
        version="1",
        description="The web console of a fleetlog fleet: overview, review queue, session "
        "timelines, read-only SQL and metrics. Every /api route takes "
        "`Authorization: Bearer <token>` when the server has a token.",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; the schema is at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.backend = backend
    app.state.token = token

    bearer = HTTPBearer(auto_error=False, description="the console token")

    def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise StarletteHTTPException(
                401,
                "a bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        if token is None and not _loopback_host(request.headers.get("host") or ""):
            # A page elsewhere may resolve its own name to 127.0.0.1 (DNS rebinding).
            return _error(400, "without a token the console answers on loopback names only")
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        )
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, message)

    @app.exception_handler(FleetlogError)
    async def fleetlog_error(request: Request, exc: FleetlogError) -> JSONResponse:
        if isinstance(exc, NotFound):
            return _error(404, str(exc))
        if isinstance(exc, Conflict):
            return _error(409, str(exc))
        if isinstance(exc, Unavailable):
            return _error(503, str(exc))
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # A bug: one line for the client; the server's log has the rest.
        return _error(500, f"internal error: {type(exc).__name__}")

    def known_query(request: Request) -> None:
        # A misspelt filter (?statsu=failed) is an error, not a silently wider answer.
        route = request.scope.get("route")
        dependant = getattr(route, "dependant", None)
        allowed = _query_names(dependant) if dependant is not None else set()
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise StarletteHTTPException(422, f"unknown query parameter {unknown[0]!r}")

    api = APIRouter(prefix="/api", dependencies=[Depends(authorized), Depends(known_query)])

    @api.get("/overview", response_model=Overview, responses=_errors(400, 401, 422, 503))
    def overview(
        window: Annotated[
            str,
            Query(max_length=40, description="'all', or a duration like 24h, 7d, or a date"),
        ] = "all",
    ) -> dict[str, Any]:
        """Counts by status, steps/s, cost today, budget use per tenant, and two series."""
        now = time.time()
        since = _since(window)
        table = backend.projections("query", overview_sql(since, now))
        row = table.to_pylist()[0]
        config = backend.config()
        counts = Counter(dict.fromkeys(STATUSES, 0))
        steps = tokens = 0
        cost = 0.0
        for item in row["statuses"]:
            counts[item["status"]] += item["n"]
            steps += item["steps"]
            tokens += item["tokens"]
            cost += item["cost"]
        tenants = []
        seen = set()
        for item in row["tenants"]:
            seen.add(item["tenant"])
            tenants.append(_tenant(item, config.budgets.get(item["tenant"])))
        for name, budget in sorted(config.budgets.items()):
            if name not in seen:
                tenants.append(
                    _tenant({"tenant": name, "sessions": 0, "tokens": 0, "cost": 0.0}, budget)
                )
        cost_series = row["cost_series"] or {"w": 1.0, "points": []}
        completion = row["completion_series"] or {"w": 1.0, "points": []}
        return {
            "fleet": backend.fleet_text(),
            "window": window or "all",
            "sessions": sum(counts.values()),
            "counts": dict(counts),
            "steps": steps,
            "tokens": tokens,
            "cost_usd": round(cost, 6),
            "cost_today": round(row["cost_today"] or 0.0, 6),
            "steps_per_s": round(row["steps_last_minute"] / 60.0, 3),
            "reviews_pending": row["reviews_pending"],
            "tenants": tenants,
            "tool_calls": row["tool_calls"],
            "failures": row["failures"],
            "cost_series": [
                p for p in cost_series["points"] if p is not None and p["t"] is not None
            ],
            "completion_series": [
                {**p, "rate": round(p["completed"] / p["ended"], 4) if p["ended"] else 0.0}
                for p in completion["points"]
                if p is not None and p["t"] is not None
            ],
            "bucket_s": {"cost": cost_series["w"], "completion": completion["w"]},
            "generated_at": now,
        }

    @api.get("/status", response_model=FleetStatus, responses=_errors(401, 503))
    def status() -> dict[str, Any]:
        """Where decisions go (the running fleet, or the log) and how many calls wait."""
        return {
            "fleet": backend.fleet_text(),
            "reviews_pending": len(backend.reviews()),
            "home": str(backend.home),
        }

    @api.get("/sessions", response_model=list[SessionRow], responses=_errors(401, 422, 503))
    def sessions(status: Status | None = None) -> list[dict[str, Any]]:
        """Every session, as `fleetlog sessions --json` lists them (oldest first)."""
        rows = backend.sessions()
        return [r for r in rows if status is None or r["status"] == status]

    @api.get(
        "/sessions/{session_id}",
        response_model=SessionDetail,
        responses=_errors(401, 404, 422, 503),
    )
    def session(session_id: SessionId) -> dict[str, Any]:
        """A session's row, tool calls, pending reviews and timeline (a task id works too)."""
        sid, stream = backend.stream(session_id)
        state = fold(sid, stream)
        reviews = [r for r in backend.reviews() if r["session_id"] == sid]
        return {
            "session": state.row(),
            "info": _json(tl.session_info(state)),
            "tool_calls": tl.tool_calls(state),
            "reviews": reviews,
            "events": [_json(e) for e in tl.timeline(stream)],
        }

    @api.post(
        "/sessions/{session_id}/cancel",
        response_model=DecisionResult,
        responses=_errors(400, 401, 404, 409, 422, 503),
    )
    def cancel(session_id: SessionId, body: Cancellation) -> dict[str, Any]:
        """Cancel a session; durable in the log before this answers."""
        return backend.decide(session_id, "cancel", reviewer=body.reviewer, note=body.note)

    @api.get("/reviews", response_model=list[Review], responses=_errors(401, 503))
    def reviews() -> list[dict[str, Any]]:
        """Tool calls waiting for a human decision, oldest first."""
        return backend.reviews()

    @api.post(
        "/reviews/{session_id}/{call_id}/approve",
        response_model=DecisionResult,
        responses=_errors(400, 401, 404, 409, 422, 503),
    )
    def approve(session_id: SessionId, call_id: CallId, body: Approval) -> dict[str, Any]:
        """Approve a call; the session resumes (now if its fleet runs, else when it runs).

        With ``input``, the call runs with that input instead of the model's (edit, then
        approve): vetted again first, so a deny rule still refuses it.
        """
        return backend.decide(
            session_id,
            "approve",
            reviewer=body.reviewer,
            call_id=call_id,
            note=body.note,
            call_hash=body.call_hash,
            edited_input=_edited_input(body.input),
        )

    @api.post(
        "/reviews/{session_id}/{call_id}/deny",
        response_model=DecisionResult,
        responses=_errors(400, 401, 404, 409, 422, 503),
    )
    def deny(session_id: SessionId, call_id: CallId, body: Denial) -> dict[str, Any]:
        """Deny a call: the model is told, or the session ends with ``end_session``."""
        return backend.decide(
            session_id,
            "deny",
            reviewer=body.reviewer,
            call_id=call_id,
            note=body.note,
            end=body.end_session,
            call_hash=body.call_hash,
        )

    @api.post("/sql", response_model=SqlResult, responses=_errors(400, 401, 422, 503))
    def sql(body: SqlRequest) -> dict[str, Any]:
        """One read-only SELECT over the projections (caught up with the log first)."""
        check_console_sql(body.query)
        started = time.perf_counter()
        try:
            table = backend.projections("query", body.query)
        except Unavailable:
            raise
        except FleetlogError as e:
            raise QueryError(str(e)) from None
        names: list[str] = list(table.column_names)
        shown = table.slice(0, body.limit).to_pylist()
        return {
            "columns": names,
            "rows": [[_json(r[n]) for n in names] for r in shown],
            "row_count": table.num_rows,
            "truncated": table.num_rows > body.limit,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    @api.get("/metrics", response_model=MetricsResult, responses=_errors(400, 401, 422, 503))
    def metrics(
        since: Annotated[str | None, Query(max_length=40, description="7d, 12h, or a date")] = None,
        agent_type: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        """The agent health metrics (``agent_health_metrics``), as `fleetlog metrics`."""
        table = backend.projections("health", _since(since or "all", "since"), agent_type)
        names: list[str] = list(table.column_names)
        return {"columns": names, "rows": [_json(r) for r in table.to_pylist()]}

    app.include_router(api)

    # --- pages: one shell, the script draws each page ----------------------------------

    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    for path in ("/", "/reviews", "/sessions", "/sql"):
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/sessions/{session_id}", page, methods=["GET"], include_in_schema=False)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _edited_input(value: dict[str, Any] | None) -> str:
    """An approval's edited input as the log keeps it (JSON text; "" for none)."""
    if value is None:
        return ""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode()
    except ValueError as e:  # NaN or Infinity (Python's JSON reads them), a lone surrogate
        raise StarletteHTTPException(422, f"input: not valid JSON text ({e})") from None
    return text


def _loopback_host(header: str) -> bool:
    """Whether a Host header names a loopback address (``127.0.0.1:8700``, ``[::1]``…)."""
    from . import is_loopback

    if header.startswith("["):
        host = header[1 : header.find("]")] if "]" in header else header
    else:
        host = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return is_loopback(host)


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route declares, its dependencies' included."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _tenant(item: dict[str, Any], budget: Any) -> dict[str, Any]:
    max_cost = budget.max_cost_usd if budget is not None else None
    max_tokens = budget.max_tokens if budget is not None else None
    return {
        "tenant": item["tenant"],
        "sessions": int(item["sessions"] or 0),
        "tokens": int(item["tokens"] or 0),
        "cost_usd": round(float(item["cost"] or 0.0), 6),
        "max_cost_usd": max_cost,
        "max_tokens": max_tokens,
        "cost_share": round(item["cost"] / max_cost, 4) if max_cost else None,
        "token_share": round(item["tokens"] / max_tokens, 4) if max_tokens else None,
    }
