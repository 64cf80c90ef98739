"""``llmsim serve`` starts the REST API (``apps.service``); ``llmsim status`` and ``llmsim fetch`` ask it about a
batch (``LLMSIM_API_TOKEN`` is sent when set)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pytest_llmsim.apps.cli.common import FAILED_EXIT, OK, UsageError, add_common_arguments, flags_of, resolve_options
from pytest_llmsim.model.settings import RecordMode

TOKEN_ENV = "LLMSIM_API_TOKEN"
DEFAULT_API_URL = "http://127.0.0.1:5000"


def add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="start the REST API")
    serve.add_argument("--host", dest="llmsim_host", metavar="HOST",
                       help="address to bind (default 127.0.0.1; env HOST)")
    serve.add_argument("--port", dest="llmsim_port", type=int, metavar="PORT", help="port (default 5000; env PORT)")
    serve.add_argument("--db", dest="llmsim_service_db", metavar="PATH",
                       help="SQLite database (default: results/llmsim.sqlite3)")
    serve.add_argument("--output-dir", dest="llmsim_output_dir", metavar="DIR")
    serve.add_argument("--concurrency", dest="llmsim_concurrency", type=int, metavar="N")
    serve.add_argument("--record", dest="llmsim_record_mode", choices=tuple(m.value for m in RecordMode))
    add_common_arguments(serve)
    serve.set_defaults(handler=command_serve)


def add_status_and_fetch(commands: Any) -> None:
    for name, text in (("status", "a batch's status"), ("fetch", "a batch's results")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("batch_id")
        sub.add_argument("--api-url", metavar="URL", help=f"the service (default {DEFAULT_API_URL})")
        if name == "fetch":
            sub.add_argument("--format", choices=("json", "csv", "ndjson"), default="json")
            sub.add_argument("--output", metavar="FILE")
        sub.set_defaults(handler=command_status if name == "status" else command_fetch)


def command_serve(args: argparse.Namespace) -> int:
    try:
        from pytest_llmsim.apps.service.app import serve
    except ImportError as exc:
        raise UsageError(f"llmsim serve needs the service extra: pip install 'pytest-llmsim[service]' ({exc})") \
            from None
    resolved = resolve_options([], flags_of(args))  # the ini file `pytest` would read here
    return serve(resolved, verbose=args.verbose)


def _api(args: argparse.Namespace, path: str, **params: str) -> Any:
    import httpx

    url = (args.api_url or os.environ.get("LLMSIM_API_URL") or DEFAULT_API_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"} if os.environ.get(TOKEN_ENV) else {}
    try:
        response = httpx.get(f"{url}{path}", params=params, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"{url}: cannot reach the service ({exc})") from None
    if response.status_code == 404:
        raise UsageError(f"batch {args.batch_id}: not found at {url}")
    if response.status_code in (401, 403):
        raise UsageError(f"{url}: not authorised; set {TOKEN_ENV} to the server's token")
    if response.status_code >= 400:
        raise ConnectionError(f"{url}{path}: HTTP {response.status_code}: {response.text[:300]}")
    return response


def command_status(args: argparse.Namespace) -> int:
    """The batch's status as JSON; exit 1 when it completed but is not ``ok`` (a scenario failed or errored)."""
    data = _api(args, f"/api/batches/{args.batch_id}").json()
    print(json.dumps(data, ensure_ascii=False, indent=2))
    return FAILED_EXIT if data.get("ok") is False else OK


def command_fetch(args: argparse.Namespace) -> int:
    response = _api(args, f"/api/batches/{args.batch_id}/results", format=args.format)
    if args.output:
        from pytest_llmsim.reporting.exports import atomic_write_bytes

        atomic_write_bytes(Path(args.output), response.content)
    else:
        sys.stdout.write(response.text)
    return OK

