"""Structured, rotated logs of the service and the ``llmsim`` command (no web framework needed).

Under the log folder, as the reference names them: ``app_<date>.log`` (what happened), ``error_<date>.log``
(warnings and errors only), ``tokens_<date>.log`` (one JSON line per finished scenario: usage and cost) and
``conversations_<date>.jsonl`` (one JSON line per turn). Every line is JSON; each file rotates at 10 MB, keeping
five. Every text passes the endpoint's scrubber first, so the API key never reaches a file or the console.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_llmsim.model.results import ScenarioRecord

ROOT = "llmsim"
MAX_BYTES = 10 * 2**20
BACKUPS = 5
_OWN = "_llmsim_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return self.scrub(json.dumps(data, ensure_ascii=False, default=str))


class PlainFormatter(logging.Formatter):
    """``--verbose`` on the console: the message and its fields, scrubbed."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{key}={json.dumps(value, ensure_ascii=False, default=str)}"
                         for key, value in fields.items())
        return self.scrub(f"{record.levelname.lower()} {record.name}: {record.getMessage()} {extra}".rstrip())


def _handler(handler: logging.Handler, formatter: logging.Formatter, level: int = logging.DEBUG) -> logging.Handler:
    handler.setFormatter(formatter)
    handler.setLevel(level)
    setattr(handler, _OWN, True)
    return handler


def setup_logs(log_dir: Path | None, *, verbose: bool, scrub: Callable[[str], str]) -> None:
    """(Re)configure the ``llmsim`` loggers: files under ``log_dir`` (None: no files), the console when
    ``verbose``. Handlers of an earlier call are closed first (tests start several servers in one process)."""
    root = logging.getLogger(ROOT)
    for handler in [h for h in root.handlers if getattr(h, _OWN, False)]:
        root.removeHandler(handler)
        handler.close()
    for name in ("tokens", "conversations"):
        child = logging.getLogger(f"{ROOT}.{name}")
        for handler in [h for h in child.handlers if getattr(h, _OWN, False)]:
            child.removeHandler(handler)
            handler.close()
    root.setLevel(logging.INFO)
    root.propagate = False
    if verbose:
        root.addHandler(_handler(logging.StreamHandler(sys.stderr), PlainFormatter(scrub)))
    if log_dir is None:
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().strftime("%Y%m%d")
    json_format = JsonFormatter(scrub)

    def rotating(name: str) -> logging.Handler:
        return logging.handlers.RotatingFileHandler(log_dir / name, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                                    encoding="utf-8")

    app = _handler(rotating(f"app_{day}.log"), json_format)
    app.addFilter(lambda record: not record.name.startswith((f"{ROOT}.tokens", f"{ROOT}.conversations")))
    root.addHandler(app)
    root.addHandler(_handler(rotating(f"error_{day}.log"), json_format, logging.WARNING))
    logging.getLogger(f"{ROOT}.tokens").addHandler(_handler(rotating(f"tokens_{day}.log"), json_format))
    logging.getLogger(f"{ROOT}.conversations").addHandler(
        _handler(rotating(f"conversations_{day}.jsonl"), json_format))


def log(name: str, level: int, message: str, **fields: Any) -> None:
    logging.getLogger(f"{ROOT}.{name}").log(level, message, extra={"fields": fields})


def log_record(batch_id: str, record: ScenarioRecord) -> None:
    """A finished scenario: one app line, its usage and cost on the token log, each turn on the conversation log."""
    result = record.result
    log("app", logging.INFO, "scenario finished", batch_id=batch_id, scenario=record.scenario,
        status=str(result.status), outcome=str(record.outcome), score=result.score,
        duration_seconds=result.duration_seconds)
    if result.error_message:
        log("app", logging.WARNING, "scenario error", batch_id=batch_id, scenario=record.scenario,
            error_kind=str(result.error_kind or ""), error=result.error_message.splitlines()[0][:500])
    log("tokens", logging.INFO, "usage", batch_id=batch_id, scenario=record.scenario,
        usage=[dict(vars(u)) for u in result.usage], cost_usd=record.cost_usd,
        saved_cost_usd=record.saved_cost_usd)
    for number, turn in enumerate(result.transcript, 1):
        log("conversations", logging.INFO, "turn", batch_id=batch_id, scenario=record.scenario, turn=number,
            role=turn.get("role"), text=turn.get("text"), cached=turn.get("cached"))
