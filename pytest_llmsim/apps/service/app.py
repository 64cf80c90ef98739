"""The REST API (FastAPI, served by uvicorn): the reference's endpoints and field names over ``BatchManager``.

Safe by default: it binds 127.0.0.1; any other address needs ``LLMSIM_API_TOKEN`` (a bearer token, compared in
constant time) or the server refuses to start. No request names a server path: code agents, template names and
metric options that read files are refused (422), the database and logs are the server's settings. Bodies over
``llmsim_max_request_bytes`` get 413, invalid input 422 with the field's path, unknown batches 404.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError

from pytest_llmsim.apps.service import store as states
from pytest_llmsim.apps.service.manager import BatchManager
from pytest_llmsim.apps.service.viewer import add_viewer
from pytest_llmsim.config.options import ResolvedOptions
from pytest_llmsim.history.store import HistoryStore
from pytest_llmsim.model.scenario import MAX_SCENARIOS_PER_FILE, Scenario
from pytest_llmsim.reporting.exports import render_csv, render_ndjson

TOKEN_ENV = "LLMSIM_API_TOKEN"
VERSION = "1.0.0"
# Metric options that name a file or folder on the server (the rouge metric's ``reference_file``, ``base_dir``, a
# custom metric's ``rubric_path``...): a key with one of these words, or ending in one.
_PATH_WORDS = frozenset({"file", "files", "filename", "filenames", "path", "paths", "dir", "dirs", "directory",
                         "folder", "folders"})
_PATH_ENDINGS = ("file", "files", "filename", "path", "paths", "dir", "dirs", "directory", "folder")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_WILDCARDS = ("0.0.0.0", "::", "")


def _bare(host: str) -> str:
    return host.strip().strip("[]").lower()


def _shown_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RequestGuard:
    """What a request must be to reach the API, against web pages a browser on this machine shows (CSRF) and
    DNS rebinding: its ``Host`` names this server (127.0.0.1, localhost or [::1] with the bound port, or the
    bound address itself), an ``Origin``, when sent, is one of those (or the Host the request was sent to), and
    a body is ``application/json``. Bound to a wildcard address (0.0.0.0, ::), which needs a token, the Host is
    not checked: the bearer token, which no browser sends on its own, is the protection there."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        bound = _bare(host)
        self.any_host = bound in _WILDCARDS
        self.names = tuple(dict.fromkeys((*_LOOPBACK_NAMES, bound)))

    def accepted(self) -> str:
        return ", ".join(_shown_host(name, self.port) for name in self.names)

    def _ours(self, hostname: str | None, port: int | None) -> bool:
        return hostname is not None and _bare(hostname) in self.names and port == self.port

    def problem(self, request: Request) -> JSONResponse | None:
        """The error response for a request that must not reach the API, or None."""
        from urllib.parse import urlsplit

        host = request.headers.get("host", "")
        try:
            split = urlsplit(f"//{host}")
            host_name, host_port = split.hostname, 80 if split.port is None else split.port
        except ValueError:
            host_name, host_port = None, None
        if not self.any_host and not self._ours(host_name, host_port):
            return JSONResponse({"detail": f"Host header {host!r} does not name this server; use one of "
                                           f"{self.accepted()}"}, status_code=421)
        origin = request.headers.get("origin")
        if origin is not None:
            try:
                split = urlsplit(origin)
                origin_port = split.port if split.port is not None else {"http": 80, "https": 443}.get(split.scheme)
                origin_name = split.hostname if split.scheme in ("http", "https") else None
            except ValueError:
                origin_name, origin_port = None, None
            same = origin_name is not None and (origin_name, origin_port) == (host_name, host_port)
            if not (self._ours(origin_name, origin_port) or same):
                return JSONResponse({"detail": f"cross-origin request from {origin!r} refused; the API accepts "
                                               f"requests without an Origin or from {self.accepted()}"},
                                    status_code=403)
        has_body = request.headers.get("transfer-encoding") is not None \
            or request.headers.get("content-length", "0") not in ("", "0")
        if has_body or (request.method == "POST" and request.url.path == "/api/batches"):
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                return JSONResponse({"detail": f"the body must be JSON sent with 'Content-Type: application/json' "
                                               f"(got {media or 'no Content-Type'!r})"}, status_code=415)
        return None


VIEW_COOKIE = "llmsim_token"


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def guard_requests(app: FastAPI, guard: RequestGuard, token: str | None) -> None:
    """Every request of ``app`` passes ``guard`` and, with a ``token``, carries it (``/api/health`` and the empty
    ``/favicon.ico`` excepted): as ``Authorization: Bearer <token>``, or, for the viewer's pages (``/view``), as the
    cookie a browser gets by opening a page once with ``?token=<token>`` (then sent back without the token in the
    address; HttpOnly, SameSite=Strict, so no other site's page can make the browser send it)."""

    @app.middleware("http")
    async def guarded(request: Request, call_next: Any) -> Any:
        refused = guard.problem(request)
        if refused is not None:
            return refused
        if token and request.url.path not in ("/api/health", "/favicon.ico"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            viewer = request.url.path == "/view" or request.url.path.startswith("/view/")
            if viewer and _same(request.query_params.get("token"), token):
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
                response.set_cookie(VIEW_COOKIE, token, httponly=True, samesite="strict", path="/view")
                return response
            if not (scheme.lower() == "bearer" and _same(given, token)) and \
                    not (viewer and _same(request.cookies.get(VIEW_COOKIE), token)):
                hint = "; open /view?token=<token> once in the browser" if viewer else ""
                return JSONResponse({"detail": f"missing or wrong bearer token{hint}"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def create_viewer_app(store: HistoryStore, host: str, port: int, *, token: str | None = None) -> FastAPI:
    """The viewer alone (``llmsim view``): its pages on ``store``, read-only, behind the API's guard and token;
    no batch manager, so nothing writes the store (an export's or a read-only disk's)."""
    app = FastAPI(title="llmsim viewer", version=VERSION, docs_url=None, redoc_url=None, openapi_url=None)
    add_viewer(app, store)
    guard_requests(app, RequestGuard(host, port), token)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/view", status_code=307)

    return app


def serve_viewer(store: HistoryStore, host: str, port: int) -> int:
    """``llmsim view``: as ``serve`` (loopback only unless a token is set), the viewer on ``store``."""
    import uvicorn

    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and token is None:
        print(f"llmsim: refusing to bind {host}: any address but loopback needs a token; set {TOKEN_ENV} (a "
              "browser then opens /view?token=<token> once), or bind 127.0.0.1", file=sys.stderr)
        return 2
    shown = _shown_host(host, port)
    print(f"llmsim: the viewer is at http://{shown}/view" + ("?token=<token>" if token else "")
          + f" ({store.where})", file=sys.stderr, flush=True)
    uvicorn.run(create_viewer_app(store, host, port, token=token), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=5)
    return 0


def db_path(resolved: ResolvedOptions) -> Path:
    configured: Path | None = resolved["llmsim_service_db"]
    return configured if configured is not None else resolved["llmsim_output_dir"] / "llmsim.sqlite3"


def _error(loc: tuple[Any, ...], message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": loc, "msg": message, "input": None}])


def _server_paths(raw: dict[str, Any], loc: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The fields of a scenario that would make the server read or import something of the client's choosing."""
    problems = []
    agent = raw.get("agent")
    if isinstance(agent, dict):
        from pytest_llmsim.model.scenario import CODE_KINDS

        for kind in CODE_KINDS:
            if kind in agent:
                problems.append({"type": "value_error", "loc": (*loc, "agent", kind), "input": None,
                                 "msg": f"a {kind} agent cannot be sent to the service (it runs or reaches code of "
                                        "the server's choosing only); run it with pytest or llmsim run"})
    for role in ("agent", "client", "evaluator"):
        value = raw.get(role)
        if isinstance(value, dict) and "template" in value:
            problems.append({"type": "value_error", "loc": (*loc, role, "template"), "input": None,
                             "msg": "templates are the server's (llmsim_prompts_dir); remove 'template'"})
    return problems


def _names_a_path(key: Any) -> bool:
    text = str(key).lower().replace("-", "_")
    return bool(set(text.split("_")) & _PATH_WORDS) or text.endswith(_PATH_ENDINGS)


def _path_options(value: Any, loc: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """The locations of every key naming a path in metric options (nested mappings and lists included)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if _names_a_path(key):
                yield (*loc, key)
            else:
                yield from _path_options(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _path_options(item, (*loc, index))


def _metric_paths(scenario: Scenario, loc: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Metric options that would make the server read a file, checked on the *normalised* metric list (the
    ``evaluate`` field as the engine will use it), so every written shape of an entry (a name, ``{name: options}``,
    ``[name, options]``) is covered."""
    return [{"type": "value_error", "loc": where, "input": None,
             "msg": "metric options naming a server file or folder are not accepted by the service (send the text "
                    "itself, e.g. the rouge metric's 'reference')"}
            for index, (name, options) in enumerate(scenario.evaluate or ())
            for where in _path_options(options, (*loc, "evaluate", index, name))]


def parse_scenarios(body: Any) -> list[Scenario]:
    """The scenarios of a launch request (a list, or ``{"scenarios": [...]}``); RequestValidationError naming the
    field of every problem."""
    loc: tuple[Any, ...] = ("body",)
    if isinstance(body, dict):
        unknown = sorted(set(body) - {"scenarios"})
        if unknown:
            raise _error((*loc, unknown[0]), "unknown field; send {\"scenarios\": [...]} or a list", "extra_forbidden")
        if "scenarios" not in body:
            raise _error((*loc, "scenarios"), "field required", "missing")
        body, loc = body["scenarios"], (*loc, "scenarios")
    if not isinstance(body, list):
        raise _error(loc, "must be a list of scenarios", "list_type")
    if not body:
        raise _error(loc, "must hold at least one scenario", "too_short")
    if len(body) > MAX_SCENARIOS_PER_FILE:
        raise _error(loc, f"at most {MAX_SCENARIOS_PER_FILE} scenarios per batch", "too_long")
    errors: list[dict[str, Any]] = []
    scenarios: list[Scenario] = []
    names: set[str] = set()
    for index, raw in enumerate(body):
        where = (*loc, index)
        if not isinstance(raw, dict):
            errors.append({"type": "dict_type", "loc": where, "msg": "must be an object with 'name' and "
                           "'variables'", "input": None})
            continue
        problems = _server_paths(raw, where)
        if problems:
            errors += problems
            continue
        try:
            scenario = Scenario.model_validate(raw)
        except ValidationError as exc:
            errors += [{"type": e["type"], "loc": (*where, *e["loc"]), "msg": e["msg"], "input": None}
                       for e in exc.errors(include_url=False)]
            continue
        problems = _metric_paths(scenario, where)
        if problems:
            errors += problems
            continue
        if scenario.name in names:
            errors.append({"type": "value_error", "loc": (*where, "name"), "input": None,
                           "msg": f"duplicate name {scenario.name!r}; names must be unique per batch"})
        names.add(scenario.name)
        scenarios.append(scenario)
    if errors:
        raise RequestValidationError(errors)
    return scenarios


_LAUNCH_SCHEMA = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        {"type": "array", "items": {"$ref": "#/components/schemas/Scenario"}},
        {"type": "object", "properties": {"scenarios": {"type": "array",
                                                        "items": {"$ref": "#/components/schemas/Scenario"}}},
         "required": ["scenarios"], "additionalProperties": False},
    ]}}}},
}


def batch_ok(info: dict[str, Any]) -> bool | None:
    """The batch's verdict, as ``llmsim run``'s exit code gives it: True when it completed with every scenario
    passed (or skipped, xfailed) and no gate missed; False when it completed otherwise (a failed or errored
    scenario, a missed gate); None while it is not complete (running, cancelled, interrupted)."""
    if info["status"] != states.COMPLETED:
        return None
    missed = json.loads(info["summary"]).get("gates", {}).get("missed") if info["summary"] else None
    return not info["failed_scenarios"] and not missed


def create_app(resolved: ResolvedOptions, *, token: str | None = None) -> FastAPI:
    """The application; ``token``: the bearer token every request but ``/api/health`` must carry (None: none)."""
    holder: dict[str, BatchManager] = {}
    max_bytes = int(resolved["llmsim_max_request_bytes"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder["manager"] = BatchManager(resolved, db_path(resolved))
        yield
        holder.pop("manager").close()

    app = FastAPI(title="LLM Simulation Service", version=VERSION, lifespan=lifespan)
    add_viewer(app, db_path(resolved))  # /view: the runs and batches of this database (viewer.py)

    def manager() -> BatchManager:
        return holder["manager"]

    def found(batch_id: str) -> dict[str, Any]:
        info = manager().store.batch(batch_id)
        if info is None:
            raise HTTPException(404, f"batch {batch_id!r} not found")
        return info

    guard_requests(app, RequestGuard(str(resolved["llmsim_host"]), int(resolved["llmsim_port"])), token)

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "healthy", "service": "LLM Simulation Service", "version": VERSION}

    @app.post("/api/batches", openapi_extra=_LAUNCH_SCHEMA)
    async def launch(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise HTTPException(413, f"request body over {max_bytes} bytes (llmsim_max_request_bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise HTTPException(413, f"request body over {max_bytes} bytes (llmsim_max_request_bytes)")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _error(("body",), f"not valid JSON: {exc}", "json_invalid") from None
        scenarios = parse_scenarios(data)
        batch_id, total = manager().launch(scenarios)
        return {"batch_id": batch_id, "status": "launched", "total_scenarios": total}

    @app.get("/api/batches")
    def list_batches() -> dict[str, Any]:
        batches = manager().store.batches()
        return {"batches": batches, "total_count": len(batches)}

    @app.get("/api/batches/{batch_id}")
    def batch_status(batch_id: str) -> dict[str, Any]:
        info = found(batch_id)
        total = int(info["total_scenarios"])
        return {"batch_id": batch_id, "status": info["status"], "ok": batch_ok(info),
                "progress": round(100.0 * info["completed_scenarios"] / total, 2) if total else 100.0,
                "total_scenarios": total, "completed_scenarios": info["completed_scenarios"],
                "failed_scenarios": info["failed_scenarios"], "errored_scenarios": info["errored_scenarios"],
                "created_at": info["created_at"],
                "started_at": info["started_at"], "completed_at": info["completed_at"],
                "webhook_deliveries": info["webhook_deliveries"], "webhook_failures": info["webhook_failures"]}

    @app.delete("/api/batches/{batch_id}")
    def cancel(batch_id: str) -> dict[str, Any]:
        info = found(batch_id)
        if info["status"] in states.ACTIVE and manager().cancel(batch_id):
            return {"batch_id": batch_id, "status": "cancelling"}
        return {"batch_id": batch_id, "status": info["status"]}

    @app.post("/api/batches/{batch_id}/resume")
    def resume(batch_id: str) -> dict[str, Any]:
        info = found(batch_id)
        if info["status"] not in (states.INTERRUPTED, states.CANCELLED) or manager().running(batch_id):
            raise HTTPException(409, f"batch {batch_id} is {info['status']}; only an interrupted or cancelled "
                                "batch can be resumed")
        remaining = manager().resume(batch_id)
        return {"batch_id": batch_id, "status": states.RUNNING, "remaining_scenarios": remaining}

    @app.get("/api/batches/{batch_id}/results")
    def results(batch_id: str, format: Literal["json", "csv", "ndjson"] = Query("json")) -> StreamingResponse:
        info = found(batch_id)
        chunks = manager().store.record_chunks(batch_id)
        media = {"json": "application/json", "csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
        body = {"json": _json_stream, "csv": _csv_stream, "ndjson": _ndjson_stream}[format]
        return StreamingResponse(body(batch_id, chunks, int(info["completed_scenarios"])), media_type=media[format],
                                 headers={"Content-Disposition": f'attachment; filename="batch_{batch_id}.{format}"'})

    @app.get("/api/batches/{batch_id}/summary")
    def summary(batch_id: str) -> dict[str, Any]:
        info = found(batch_id)
        data = json.loads(info["summary"]) if info["summary"] else manager().summary(batch_id)
        return {"batch_id": batch_id, "status": info["status"], "ok": batch_ok(info), **data}

    @app.get("/api/batches/{batch_id}/cost")
    def cost(batch_id: str) -> dict[str, Any]:
        info = found(batch_id)
        data = json.loads(info["summary"]) if info["summary"] else manager().summary(batch_id)
        keys = ("total_cost_usd", "total_tokens", "total_requests", "average_cost_per_request", "saved_cost_usd",
                "replayed_requests", "replayed_tokens", "prompt_tokens", "completion_tokens", "unpriced_models",
                "price_sources")
        return {"batch_id": batch_id, **{key: data[key] for key in keys}}

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the Scenario model the launch body refers to (the body is read by hand)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            model = Scenario.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(model.pop("$defs", {}))
            components["Scenario"] = model
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    return app


def _json_stream(batch_id: str, chunks: Iterator[list[dict[str, Any]]], total: int) -> Iterator[str]:
    yield json.dumps({"batch_id": batch_id})[:-1] + ', "results": ['
    count = 0
    for chunk in chunks:
        for row in chunk:
            yield ("," if count else "") + json.dumps(row, ensure_ascii=False)
            count += 1
    yield f'], "total_results": {count}}}'


def _csv_stream(batch_id: str, chunks: Iterator[list[dict[str, Any]]], total: int) -> Iterator[str]:
    header = True
    for chunk in chunks:
        text = render_csv(chunk)
        yield text if header else text.split("\n", 1)[1]
        header = False
    if header:
        yield render_csv([])


def _ndjson_stream(batch_id: str, chunks: Iterator[list[dict[str, Any]]], total: int) -> Iterator[str]:
    for chunk in chunks:
        yield render_ndjson(chunk)


def database_problem(path: Path) -> str | None:
    """Why the service cannot keep its batches in ``path`` (one line naming it and what to do), or None."""
    import sqlite3

    hint = "give a database file with --db or llmsim_service_db"
    if path.is_dir():
        return f"--db {path}: is a directory; {hint} (e.g. --db {path / 'llmsim.sqlite3'})"
    try:
        states.Store(path).close()
    except (sqlite3.Error, OSError) as exc:
        return f"--db {path}: cannot be used as the service's SQLite database ({exc}); {hint}"
    return None


def serve(resolved: ResolvedOptions, *, verbose: bool = False) -> int:
    """``llmsim serve``: refuse a non-loopback address without a token, then run uvicorn until stopped."""
    import uvicorn

    from pytest_llmsim.apps.batch import secret_scrubber
    from pytest_llmsim.apps.service.logs import setup_logs

    host, port = str(resolved["llmsim_host"]), int(resolved["llmsim_port"])
    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and token is None:
        print(f"llmsim: refusing to bind {host}: any address but loopback needs a token; set {TOKEN_ENV} (clients "
              "send it as 'Authorization: Bearer <token>'), or bind 127.0.0.1", file=sys.stderr)
        return 2
    problem = database_problem(db_path(resolved))
    if problem is not None:
        print(f"llmsim: {problem}", file=sys.stderr)
        return 2
    log_dir: Path | None = resolved["llmsim_log_dir"]
    setup_logs(log_dir, verbose=verbose, scrub=secret_scrubber(resolved))
    app = create_app(resolved, token=token)
    print(f"llmsim: serving on http://{host}:{port} (database {db_path(resolved)})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning", timeout_graceful_shutdown=5)
    return 0
