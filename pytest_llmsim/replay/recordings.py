"""Readable recordings: one JSON file per scenario, the layer replayed before the disk cache (no pytest).

Why one module: it is the recording format's one writer and one reader (the layout, its parser and checks, the
recorder that decides when a file is rewritten, and the inventory of unused files); a byte-stable format is only
stable while its writer and its reader change together, so they stay side by side.

A recording holds what a reviewer reads in a pull request and what a replay needs, and nothing volatile
(no timestamps, latencies or cache flags), with a fixed key order and a fixed layout (``render``: a value on
one line when it fits in 100 columns, one item per line otherwise; a text of several lines as a list of its
lines), so that re-recording an unchanged conversation rewrites no byte and a changed one diffs turn by turn::

    {
      "llmsim_recording": 1,
      "nodeid": "scenarios/shop.json::dmitry",
      "scenario": "dmitry",
      "endpoint": "http://127.0.0.1:8000/v1",       (for information: not matched unless llmsim_match_endpoint)
      "roles": {"agent": {"model": ..., "temperature": ..., "max_tokens": ...}, "client": ..., "evaluator": ...},
      "verdict": {"status", "score", "min_score", "comment"}    (an error: {"status", "error_kind", "error"})
      "ended_by", "end_reason", "timeout": {"turns", "key"} (a conversation that timed out),
      "transcript": [{"role", "text", "tool_calls"?, "scripted"?, "messages"?, "handoffs"?}, ...],
                    (a multi-agent turn: "messages": [{"agent", "content", "tool_calls"?}], "handoffs": [{"from",
                    "to", "reason"?}])
      "prompts": {"agent": <system prompt>, "client": ..., "evaluator": ...},
      "calls": [{"call", "role", "model", "temperature", "max_tokens", "seed", "format"?, "attempt"?, "messages",
                 "key", "reply", "tool_calls"?, "logprobs"?, "usage": {"prompt_tokens", "completion_tokens",
                 "cached_input_tokens"?}, ...}, ...]
    }

A call is matched by ``key``: the SHA-256 of everything that decides its reply (``cache.request_key``) except the
endpoint, unless ``llmsim_match_endpoint`` is set. So recordings made against an API replay in CI with no key
and no base URL.

JSON rather than YAML: it loads about thirty times faster (replaying a thousand recordings must cost about as
much as a thousand trivial tests) and holds nothing but data. Recordings are committed and read back as
untrusted input all the same: the size is bounded, every field's type is checked, and a file that fails a
check is a :class:`~pytest_llmsim.errors.CacheError` naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pytest_llmsim.errors import CacheError, ErrorKind, RecordingError
from pytest_llmsim.model.results import (
    ModelUsage,
    ScenarioResult,
    Status,
    heard_text,
    routing_text,
    tool_call_text,
    turn_tool_calls,
)
from pytest_llmsim.model.settings import RecordMode
from pytest_llmsim.replay.cache import marker_key, request_key
from pytest_llmsim.safe_files import UnreadableFile, read_bounded

FORMAT = 1
SUFFIX = ".json"
MAX_RECORDING_BYTES = 32 * 2**20
_MAX_DEPTH = 64
_KEY = re.compile(r"[0-9a-f]{64}")
_TRANSCRIPT_LINE = re.compile(r"\s*(\d+)\. ([^:]+): (.*)")  # a line of ``Transcript.as_text`` in a judge prompt
_UNSAFE_NAME = re.compile(r"[^\w.\-\[\]]+", re.UNICODE)
# Errors that a replay of the same calls reproduces: such a scenario's calls are worth keeping. Others
# (endpoint down, cache miss, an agent crash) say nothing about the recorded conversation.
RECORDABLE_ERRORS = frozenset({ErrorKind.INVALID_VERDICT.value, ErrorKind.NO_AGENT_REPLY.value})
_RERECORD = "delete it and re-record with --llmsim-record=once"
# A file that disagrees with itself was edited by hand: re-recording with ``once`` would keep its edited calls.
_RESTORE = ("restore the file from version control, or re-record it with --llmsim-record=all (calls the "
            "endpoint again) and commit it")
SCORE_RANGE = (1, 3)  # the judge's scale

_WIDTH = 100


# -- where recordings live ---------------------------------------------------------------------------------------
def _safe_part(text: str) -> str:
    """A file-name-safe form of ``text``; a short hash keeps it unique when characters had to be replaced."""
    cleaned = _UNSAFE_NAME.sub("_", text).strip("._") or "_"
    if cleaned != text or len(cleaned) > 120:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned[:100]}-{digest}"
    return cleaned


def recording_path(root: Path, nodeid: str, trial: int | None = None) -> Path:
    """The recording of the scenario ``nodeid``: ``root/<file of the nodeid>/<rest of it>.json``.

    ``scenarios/shop.json::dmitry`` -> ``root/scenarios/shop.json/dmitry.json``; a Python test's conversation
    ``tests/test_bot.py::test_refund`` -> ``root/tests/test_bot.py/test_refund.json``. ``trial`` (2, 3, ...)
    adds ``.trial-N``.
    """
    file_part, _, rest = nodeid.partition("::")
    parts = [_safe_part(p) if p not in ("", ".") else "_" for p in file_part.replace("\\", "/").split("/")]
    parts = ["__" if p == ".." else p for p in parts]
    name = _safe_part(rest.replace("::", "__")) if rest else "_"
    if trial is not None and trial > 1:
        name += f".trial-{trial}"
    return root.joinpath(*parts, name + SUFFIX)


def source_of(root: Path, path: Path) -> str:
    """The scenario (or test) file a recording belongs to, relative to the rootdir: its directory under root."""
    return path.parent.relative_to(root).as_posix()


# -- reading -----------------------------------------------------------------------------------------------------
@dataclass
class Recording:
    """One recording file, checked."""

    path: Path
    data: dict[str, Any]
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> response (as the cache stores it)

    @property
    def nodeid(self) -> str:
        return str(self.data["nodeid"])

    @property
    def item(self) -> str:
        return str(self.data.get("item") or self.data["nodeid"])

    @property
    def transcript(self) -> list[dict[str, Any]]:
        return self.data.get("transcript") or []

    @property
    def timeout(self) -> dict[str, Any] | None:
        return self.data.get("timeout")

    def to_result(self) -> ScenarioResult:
        """The recorded run as a result (for baselines): verdict, transcript and usage (every call as live)."""
        verdict = self.data.get("verdict") or {}
        usage: dict[tuple[str, str], ModelUsage] = {}
        for call in self.data.get("calls") or []:
            meter = usage.setdefault((call["role"], call["model"]), ModelUsage(call["role"], call["model"]))
            meter.add(call["usage"]["prompt_tokens"], call["usage"]["completion_tokens"], False,
                      cached_input_tokens=int(call["usage"].get("cached_input_tokens") or 0))
        status = Status(verdict.get("status", "error"))
        return ScenarioResult(
            scenario=str(self.data["scenario"]), nodeid=self.nodeid, source=self.nodeid.partition("::")[0],
            status=status, min_score=verdict.get("min_score"), score=verdict.get("score"),
            comment=verdict.get("comment", ""), transcript=[dict(t) for t in self.transcript],
            ended_by=self.data.get("ended_by", ""), end_reason=self.data.get("end_reason", ""),
            error_kind=ErrorKind.parse(verdict.get("error_kind")), error_message=verdict.get("error", ""),
            usage=list(usage.values()), metrics=[dict(metric) for metric in self.data.get("metrics") or []],
        )


class _Problem(Exception):
    pass


def _where(path: Path) -> str:
    return f"llmsim recording {path}"


def load_recording(path: Path) -> Recording:
    """Read and check one recording; CacheError (one line: the file, what is wrong, what to do) otherwise."""
    raw = read_recording(path)
    if raw is None:
        raise CacheError(f"{_where(path)} does not exist; record it with --llmsim-record=once")
    return parse_recording(raw, path)


def read_recording(path: Path) -> bytes | None:
    """The bytes of a recording, None if there is none; CacheError if it cannot be read, is not a regular file
    (a symlink to ``/dev/zero``, a FIFO: never read) or is too large."""
    try:
        return read_bounded(path, MAX_RECORDING_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnreadableFile as exc:
        if exc.too_large:
            raise CacheError(f"{_where(path)} {exc}; {_RERECORD}") from None
        if path.is_dir():
            raise CacheError(f"{_where(path)} is a directory, not a file; remove it or rename the scenario") from None
        raise CacheError(f"{_where(path)} {exc}; replace it with the recording file, or {_RERECORD}") from None
    except OSError as exc:
        raise CacheError(f"{_where(path)} cannot be read ({exc.strerror or exc}); fix its permissions or "
                         f"{_RERECORD}") from None


def parse_recording(raw: bytes, path: Path) -> Recording:
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)  # too deep: RecursionError
        return _check_recording(data, path)
    except UnicodeDecodeError:
        raise CacheError(f"{_where(path)} is not UTF-8 text; {_RERECORD}") from None
    except json.JSONDecodeError as exc:
        raise CacheError(f"{_where(path)} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         f"{_RERECORD}") from None
    except _Problem as exc:
        raise CacheError(f"{_where(path)}: {exc}; {_RERECORD}") from None
    except (RecursionError, ValueError) as exc:
        raise CacheError(f"{_where(path)} cannot be read ({type(exc).__name__}: too deep or a bad number); "
                         f"{_RERECORD}") from None


def _no_constant(name: str) -> Any:
    raise _Problem(f"holds {name}, which is not JSON data")


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping",
          list: "a list"}


def _need(mapping: Mapping[str, Any], name: str, types: tuple[type, ...], where: str, *, optional: bool = False) -> Any:
    """``mapping[name]``, which must be of one of ``types`` exactly (a boolean is not an integer); None if it is
    optional and absent."""
    value = mapping.get(name)
    if value is None:
        if optional:
            return None
        raise _Problem(f"{where}{name} is missing")
    if type(value) not in types:
        raise _Problem(f"{where}{name} is not {' or '.join(_NAMES.get(t, t.__name__) for t in types)}")
    return value


_STR, _INT, _NUMBER, _BOOL, _DICT, _LIST = (str,), (int,), (int, float), (bool,), (dict,), (list,)
# The fields of a call besides its key, reply and usage: (name, types, optional).
_CALL_FIELDS = (("role", _STR, False), ("model", _STR, False), ("call", _STR, True), ("format", _STR, True),
                ("reply_model", _STR, True), ("endpoint", _STR, True), ("temperature", _NUMBER, True),
                ("max_tokens", _INT, True), ("seed", _INT, True), ("attempt", _INT, True), ("messages", _INT, True),
                ("tool_calls", _LIST, True), ("end", _BOOL, True), ("agent_messages", _LIST, True),
                ("handoffs", _LIST, True), ("name", _STR, True))


def _text(mapping: dict[str, Any], name: str, where: str, *, optional: bool = False) -> str | None:
    """A text field, written as one string or, when it has several lines, as the list of its lines; replaced in
    ``mapping`` by the text itself."""
    value = mapping.get(name)
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        mapping[name] = value = "\n".join(value)
    text: str | None = _need(mapping, name, (str,), where, optional=optional)
    return text


def _check_logprobs(value: Any, where: str) -> list[dict[str, Any]]:
    """A call's ``logprobs`` (``client.read_logprobs``: per token ``{"token", "logprob", "top_logprobs"}``), checked;
    a replayed verdict of the ``logprobs`` judge is computed from them."""
    def token(item: Any, at: str) -> None:
        if (type(item) is not dict or type(item.get("token")) is not str
                or type(item.get("logprob")) not in (int, float)):
            raise _Problem(f"{at} is not a {{'token': text, 'logprob': number}} mapping")

    if type(value) is not list:
        raise _Problem(f"{where}logprobs is not a list")
    for i, item in enumerate(value):
        token(item, f"{where}logprobs[{i}]")
        top = item.get("top_logprobs", [])
        if type(top) is not list:
            raise _Problem(f"{where}logprobs[{i}].top_logprobs is not a list")
        for j, alternative in enumerate(top):
            token(alternative, f"{where}logprobs[{i}].top_logprobs[{j}]")
    return value


def _call_problem(call: dict[str, Any], where: str) -> NoReturn:
    """Raise the problem of a call that failed the quick check, worded field by field."""
    key = call.get("key")
    if type(key) is not str or not _KEY.fullmatch(key):
        raise _Problem(f"{where}key is not a SHA-256 hex digest")
    for name, types, optional in _CALL_FIELDS:
        _need(call, name, types, where, optional=optional)
    _text(call, "reply", where)
    _need(call, "usage", _DICT, where)
    raise _Problem(f"{where[:-1]} is not a valid call")  # pragma: no cover - the checks above name it


def _check_recording(data: Any, path: Path) -> Recording:
    if not isinstance(data, dict):
        raise _Problem("is not a mapping")
    version = data.get("llmsim_recording")
    if version != FORMAT:
        raise _Problem(f"has format {version!r}, this llmsim reads format {FORMAT}")
    for name in ("nodeid", "scenario"):
        _need(data, name, (str,), "")
    for name in ("item", "endpoint", "ended_by", "end_reason"):
        _need(data, name, (str,), "", optional=True)
    verdict = _need(data, "verdict", (dict,), "")
    status = _need(verdict, "status", (str,), "verdict.")
    if status not in {s.value for s in Status}:
        raise _Problem(f"verdict.status {status!r} is not one of passed, failed, error, skipped")
    for name in ("score", "min_score"):
        value = _need(verdict, name, (int,), "verdict.", optional=True)
        if value is not None and not SCORE_RANGE[0] <= value <= SCORE_RANGE[1]:
            raise _Problem(f"verdict.{name} is {value}, not a score from {SCORE_RANGE[0]} to {SCORE_RANGE[1]}")
    _need(verdict, "error_kind", (str,), "verdict.", optional=True)
    for name in ("comment", "error"):
        _text(verdict, name, "verdict.", optional=True)
    for i, metric in enumerate(_need(data, "metrics", _LIST, "", optional=True) or []):
        if type(metric) is not dict or type(metric.get("name")) is not str:
            raise _Problem(f"metrics[{i}] is not a mapping with a name")
        _text(metric, "reason", f"metrics[{i}].", optional=True)
    roles = _need(data, "roles", (dict,), "", optional=True) or {}
    for role, settings in roles.items():
        _need(roles, role, (dict,), "roles.")
        _need(settings, "model", (str,), f"roles.{role}.", optional=True)
        _need(settings, "temperature", (int, float), f"roles.{role}.", optional=True)
        _need(settings, "max_tokens", (int,), f"roles.{role}.", optional=True)
    timeout = _need(data, "timeout", (dict,), "", optional=True)
    if timeout is not None:
        turns = _need(timeout, "turns", (int,), "timeout.")
        if turns < 0:
            raise _Problem("timeout.turns is negative")
        if not _KEY.fullmatch(str(_need(timeout, "key", (str,), "timeout."))):
            raise _Problem("timeout.key is not a SHA-256 hex digest")
    for i, turn in enumerate(_need(data, "transcript", (list,), "", optional=True) or []):
        if type(turn) is dict and turn.get("role") in ("client", "agent") and type(turn.get("text")) is str \
                and type(turn.get("tool_calls", [])) is list and type(turn.get("scripted", False)) is bool \
                and "messages" not in turn and "handoffs" not in turn:
            continue  # the common case, checked at once
        where = f"transcript[{i}]."
        if not isinstance(turn, dict):
            raise _Problem(f"transcript[{i}] is not a mapping")
        if _need(turn, "role", (str,), where) not in ("client", "agent"):
            raise _Problem(f"{where}role is not client or agent")
        _text(turn, "text", where)
        _need(turn, "tool_calls", (list,), where, optional=True)
        _need(turn, "scripted", (bool,), where, optional=True)
        for j, message in enumerate(_need(turn, "messages", (list,), where, optional=True) or []):
            if type(message) is not dict:
                raise _Problem(f"{where}messages[{j}] is not a mapping")
            _need(message, "agent", (str,), f"{where}messages[{j}].")
            _text(message, "content", f"{where}messages[{j}].")
            _need(message, "tool_calls", (list,), f"{where}messages[{j}].", optional=True)
        for j, handoff in enumerate(_need(turn, "handoffs", (list,), where, optional=True) or []):
            if type(handoff) is not dict:
                raise _Problem(f"{where}handoffs[{j}] is not a mapping")
            for name in ("from", "to"):
                _need(handoff, name, (str,), f"{where}handoffs[{j}].")
    prompts = _need(data, "prompts", (dict,), "", optional=True) or {}
    for role in prompts:
        _text(prompts, role, "prompts.")
    replies: dict[str, dict[str, Any]] = {}
    for i, call in enumerate(_need(data, "calls", _LIST, "", optional=True) or []):
        # The common case in one pass over the call's fields; the slow path only to word a problem.
        if type(call) is not dict:
            raise _Problem(f"calls[{i}] is not a mapping")
        get = call.get
        key, usage, reply, tool_calls, end, served_by = (get("key"), get("usage"), get("reply"), get("tool_calls"),
                                                         get("end"), get("reply_model"))
        # Only the fields a replay or a baseline reads are checked here (the others are for people).
        if (type(key) is not str or type(usage) is not dict or type(reply) not in (str, list)
                or type(get("role")) is not str or type(get("model")) is not str
                or (tool_calls is not None and type(tool_calls) is not list)
                or (end is not None and type(end) is not bool)
                or (served_by is not None and type(served_by) is not str)):
            _call_problem(call, f"calls[{i}].")
        if not _KEY.fullmatch(key):
            raise _Problem(f"calls[{i}].key is not a SHA-256 hex digest")
        if type(reply) is list:
            reply = _text(call, "reply", f"calls[{i}].")
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if type(prompt_tokens) is not int or type(completion_tokens) is not int:
            for name in ("prompt_tokens", "completion_tokens"):
                _need(usage, name, _INT, f"calls[{i}].usage.")
            raise _Problem(f"calls[{i}].usage is not valid")  # pragma: no cover - _need named the field
        if prompt_tokens < 0 or completion_tokens < 0:
            name = "prompt_tokens" if prompt_tokens < 0 else "completion_tokens"
            raise _Problem(f"calls[{i}].usage.{name} is {usage[name]}, not a non-negative integer")
        response: dict[str, Any] = {"text": reply, "prompt_tokens": prompt_tokens,
                                    "completion_tokens": completion_tokens, "latency_s": 0.0,
                                    "model": served_by or call["model"]}
        if tool_calls:
            response["tool_calls"] = tool_calls
        if "logprobs" in call:
            response["logprobs"] = _check_logprobs(call["logprobs"], f"calls[{i}].")
        if end:
            response["end"] = True
        for name, types in (("agent_messages", _LIST), ("handoffs", _LIST), ("name", _STR)):
            if name in call:  # a multi-agent reply (read again by the agent runtime's checks), a speaker's name
                response[name] = _need(call, name, types, f"calls[{i}].")
        cached_input = usage.get("cached_input_tokens")
        if cached_input is not None:
            if type(cached_input) is not int:
                _need(usage, "cached_input_tokens", _INT, f"calls[{i}].usage.")
            if cached_input < 0:
                raise _Problem(f"calls[{i}].usage.cached_input_tokens is {cached_input}, not a non-negative integer")
            response["cached_input_tokens"] = cached_input
        replies.setdefault(key, response)
    problem = _verdict_problem(data)
    if problem is not None:
        raise RecordingError(f"{_where(path)}: {problem}; {_RESTORE}")
    return Recording(path, data, replies)


def _verdict_problem(data: Mapping[str, Any]) -> str | None:
    """Where the verdict block disagrees with the rest of the file: its status with its score and minimum or
    with the metrics' verdicts, its score with the judge metric's."""
    verdict = data["verdict"]
    status = verdict["status"]
    if status not in (Status.PASSED, Status.FAILED):
        return None
    metrics = [m for m in data.get("metrics") or [] if isinstance(m, dict)]
    judge = next((m for m in metrics if m.get("name") == "judge"), None)
    score, min_score = verdict.get("score"), verdict.get("min_score")
    if judge is not None and "score" in judge and judge.get("score") != score:
        index = metrics.index(judge)
        return (f"field 'verdict.score' says {score} but metrics[{index}] (judge) scores {judge.get('score')}")
    if metrics:
        failing = next((m for m in metrics if m.get("passed") is False), None)
        expected = Status.FAILED if failing is not None else Status.PASSED
        why = f"metric {failing.get('name')!r} did not pass" if failing is not None else "every metric passed"
    elif score is not None and min_score is not None:
        expected = Status.PASSED if score >= min_score else Status.FAILED
        why = f"score {score} against minimum {min_score}"
    else:
        return None
    if status != expected:
        return f"field 'verdict.status' says {status} but {why}, which is {expected}"
    return None


def iter_recordings(root: Path) -> Iterator[Path]:
    """Every recording file under ``root`` (sorted; hidden directories and temporary files skipped)."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(SUFFIX) and not name.startswith("."):
                yield Path(dirpath) / name


def recorded_tokens(root: Path, nodeid: str) -> int | None:
    """The tokens (prompt + completion) of every recorded call of the scenario ``nodeid``, its trials' recordings
    (``.trial-2``, ...) included: what the shard split balances (``model.shards``). None when it has no recording
    or one that cannot be read (its replay reports that; the split counts it as a typical scenario)."""
    total, found = 0, False
    for trial in range(1, 1_000):
        path = recording_path(root, nodeid, trial)
        if not path.exists():
            break
        try:
            raw = read_recording(path)
            data = json.loads(raw) if raw is not None else None
        except (CacheError, ValueError, RecursionError):
            continue
        calls = data.get("calls") if isinstance(data, dict) else None
        if not isinstance(calls, list):
            continue
        found = True
        for call in calls:
            usage = call.get("usage") if isinstance(call, dict) else None
            if isinstance(usage, dict):
                total += sum(value for name in ("prompt_tokens", "completion_tokens")
                             if isinstance(value := usage.get(name), int) and not isinstance(value, bool))
    return total if found else None


# -- writing -----------------------------------------------------------------------------------------------------
def render(data: Mapping[str, Any]) -> bytes:
    """The file's bytes: keys in the order given, a value on one line when it fits in ``_WIDTH`` columns, one
    item per line otherwise, non-ASCII text as is. Texts are laid out by ``text_value``."""
    return (_layout(dict(data), 0, force=True) + "\n").encode("utf-8")


class _Lines(list[str]):
    """A text of several lines, written one line per line (always expanded, so each line diffs on its own)."""


def text_value(text: str) -> str | list[str]:
    """How a text field is written: as is, or, with several lines, as the list of its lines."""
    return _Lines(text.split("\n")) if "\n" in text else text


def _layout(value: Any, indent: int, column: int | None = None, *, force: bool = False) -> str:
    """``value`` laid out at line indentation ``indent``, starting at ``column`` (after a key)."""
    return _laid(value, _inline(value), indent, indent if column is None else column, force)


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


def _inline(value: Any) -> Any:
    """``value``'s one-line JSON, with that of each container inside it, built once bottom-up (so laying out
    a document costs one pass, not one serialisation per level): ``(text, children)`` for a container."""
    if isinstance(value, dict):
        children = {key: _inline(item) for key, item in value.items()}
        text = "{" + ", ".join(f"{_dumps(key)}: {_text_of(child)}" for key, child in children.items()) + "}"
        return text, children
    if isinstance(value, list):
        items = [_inline(item) for item in value]
        return "[" + ", ".join(_text_of(child) for child in items) + "]", items
    return _dumps(value)


def _text_of(inline: Any) -> str:
    text: str = inline[0] if isinstance(inline, tuple) else inline
    return text


def _laid(value: Any, inline: Any, indent: int, start: int, force: bool) -> str:
    text = _text_of(inline)
    if not isinstance(value, dict | list) or not value:
        return text
    if not (force or isinstance(value, _Lines)) and start + len(text) <= _WIDTH:
        return text
    pad = " " * (indent + 2)
    children = inline[1]
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            prefix = f"{pad}{_dumps(key)}: "
            items.append(prefix + _laid(item, children[key], indent + 2, len(prefix), False))
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    lines = [pad + _laid(item, child, indent + 2, indent + 2, False)
             for item, child in zip(value, children, strict=True)]
    return "[\n" + ",\n".join(lines) + "\n" + " " * indent + "]"


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (temporary file + rename, so readers never see half a file) unless the file
    already holds exactly these bytes; True when written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


# -- one scenario's recording during a run -----------------------------------------------------------------------
CURRENT: contextvars.ContextVar[ScenarioRecorder | None] = contextvars.ContextVar("llmsim_recorder", default=None)


def _format_name(descriptor: Mapping[str, Any]) -> str | None:
    fmt = descriptor.get("response_format")
    return "json_schema" if fmt else None


class ScenarioRecorder:
    """Replays one scenario's recording and collects the calls its conversation makes, to write them back.

    ``exclusive``: record mode ``new`` and the scenario has a recording: only the recording answers (a call it
    lacks is a miss), and it is never rewritten.
    """

    def __init__(self, path: Path, mode: RecordMode, *, nodeid: str, item: str, scenario: str,
                 endpoint: str, match_endpoint: bool, existing: Recording | None) -> None:
        self.path = path
        self.mode = mode
        self.nodeid, self.item, self.scenario, self.endpoint = nodeid, item, scenario, endpoint
        self.match_endpoint = match_endpoint
        self.existing = existing if mode.replays() else None
        self.exclusive = mode is RecordMode.NEW and existing is not None
        self._calls: list[tuple[str, Mapping[str, Any], Mapping[str, Any], str, str, str]] = []
        self._all_replayed = True  # every call so far was answered by the existing recording
        self._timeout: dict[str, Any] | None = None
        self._live: list[Any] | None = None  # the conversation's turns as they are made (``watch``)

    @classmethod
    def open(cls, root: Path, mode: RecordMode, *, nodeid: str, item: str = "", scenario: str,
             endpoint: str, match_endpoint: bool = False, trial: int | None = None) -> ScenarioRecorder:
        """The recorder of one scenario; its existing recording is read (and checked) unless mode is ``all``."""
        path = recording_path(root, nodeid, trial)
        raw = read_recording(path) if mode.replays() else None
        existing = parse_recording(raw, path) if raw is not None else None
        if existing is not None and existing.nodeid != nodeid:
            raise CacheError(f"{_where(path)} belongs to {existing.nodeid!r}, not {nodeid!r} (two names map to one "
                             f"file?); rename one of the scenarios, or {_RERECORD}")
        return cls(path, mode, nodeid=nodeid, item=item or nodeid, scenario=scenario, endpoint=endpoint,
                   match_endpoint=match_endpoint, existing=existing)

    # -- replay --
    def call_key(self, descriptor: Mapping[str, Any], *, own_endpoint: bool = False) -> str:
        """The match key of a request: ``cache.request_key`` without the endpoint (unless it must match, or the
        "endpoint" names the agent itself, ``own_endpoint``)."""
        if own_endpoint or self.match_endpoint:
            return request_key(dict(descriptor))
        return request_key({**descriptor, "endpoint": None})

    def lookup(self, key: str) -> dict[str, Any] | None:
        if self.existing is None:
            return None
        return self.existing.replies.get(key)

    def recorded_roles(self) -> Mapping[str, Any]:
        return (self.existing.data.get("roles") or {}) if self.existing is not None else {}

    def marker_key(self, payload: Mapping[str, Any]) -> str:
        if self.match_endpoint:
            return marker_key("conversation_timeout", dict(payload))
        return marker_key("conversation_timeout", {**payload, "endpoint": None})

    def lookup_timeout(self, key: str) -> int | None:
        recorded = self.existing.timeout if self.existing is not None else None
        return recorded["turns"] if recorded is not None and recorded.get("key") == key else None

    def set_timeout(self, key: str, turns: int) -> None:
        self._timeout = {"turns": turns, "key": key}

    def watch(self, turns: list[Any]) -> None:
        """Follow the conversation's turns (``model.transcript.Turn``s, appended as they are made), so that a
        divergence can name the turn where who answered changed."""
        self._live = turns

    def changed_routing(self) -> tuple[int, str, str] | None:
        """(turn number, recorded speakers, new speakers) when the first turn of the conversation so far that
        differs from the recording differs in who spoke or who handed to whom (``results.routing_text``)."""
        if self.existing is None or not self._live:
            return None
        for number, (live, then) in enumerate(zip(self._live, self.existing.transcript, strict=False), start=1):
            now = live if isinstance(live, Mapping) else vars(live)
            was_routing, now_routing = routing_text(then), routing_text(now)
            if was_routing != now_routing:
                return number, was_routing or "one agent", now_routing or "one agent"
            if str(now.get("role")) != str(then.get("role")) or str(now.get("text")) != str(then.get("text")):
                return None  # the text changed first: told by the text
        return None

    def miss_message(self, label: str, descriptor: Mapping[str, Any], role: str) -> str:
        """Why a call is not in the recording, for people: where the conversation left it, if it did."""
        why = self.divergence(descriptor, role) or "no recorded call has the same request"
        return (f"{label}: the recording {self.path} has no reply for this call ({why}), and record mode "
                f"'{self.mode}' never changes an existing recording. If the change is intended, re-record it with "
                "--llmsim-record=once (needs the endpoint) and commit it.")

    def divergence(self, descriptor: Mapping[str, Any], role: str) -> str | None:
        """Where ``descriptor`` (a customer, agent or judge request) leaves the recording: its settings, its system
        prompt, or the first transcript turn whose text differs (for the judge, the first changed line of the
        transcript its prompt shows); a turn that another agent answered names the recorded and the new one."""
        routing = self.changed_routing()
        if routing is not None and self.changed_setting(descriptor, role) is None:
            number, was, now = routing
            return (f"the conversation diverged from the recording at turn {number}: recorded speaker(s) "
                    f"{_shorten(was)!r}, now {_shorten(now)!r}")
        if role == "evaluator" and self.changed_setting(descriptor, role, prompt=False) is None:
            judged = self._judged_turn_change(descriptor)
            if judged is not None:
                number, was, now = judged
                return (f"the conversation diverged from the recording at turn {number}: recorded "
                        f"{_shorten(was)!r}, now {_shorten(now)!r}")
        changed = self.changed_setting(descriptor, role)
        if changed is not None:
            return changed
        turn = self.changed_turn(descriptor, role)
        if turn is None:
            return None
        number, was, now, _ = turn
        return (f"the conversation diverged from the recording at turn {number}: recorded {_shorten(was)!r}, "
                f"now {_shorten(now)!r}")

    def _judged_turn_change(self, descriptor: Mapping[str, Any]) -> tuple[int, str, str] | None:
        """(turn, recorded text, new text) of the first transcript line (``N. Speaker: text``) that differs between
        the recorded judge prompt and this one, when that is the prompts' first difference."""
        if self.existing is None:
            return None
        messages = list(descriptor.get("messages") or [])
        prompt = (self.existing.data.get("prompts") or {}).get("evaluator")
        if not messages or prompt is None or messages[0].get("role") != "system":
            return None
        prompt = "\n".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
        old_lines, new_lines = prompt.splitlines(), str(messages[0].get("content") or "").splitlines()
        pair = next(((a, b) for a, b in zip(old_lines, new_lines, strict=False) if a != b), None)
        if pair is None:
            return None
        old_match, new_match = _TRANSCRIPT_LINE.match(pair[0]), _TRANSCRIPT_LINE.match(pair[1])
        if old_match is None or new_match is None or old_match.group(1) != new_match.group(1):
            return None
        return int(new_match.group(1)), old_match.group(3), new_match.group(3)

    def changed_setting(self, descriptor: Mapping[str, Any], role: str, *, prompt: bool = True) -> str | None:
        """The role's setting (model, temperature, max tokens) or system prompt (unless ``prompt`` is False) that
        differs from the recording."""
        if self.existing is None:
            return None
        recorded_role = (self.existing.data.get("roles") or {}).get(role) or {}
        for name in ("model", "temperature", "max_tokens"):
            if name in recorded_role and recorded_role[name] != descriptor.get(name):
                return f"{role} {name}: recorded {recorded_role[name]!r}, now {descriptor.get(name)!r}"
        if not prompt:
            return None
        messages = list(descriptor.get("messages") or [])
        recorded = (self.existing.data.get("prompts") or {}).get(role)
        if messages and recorded is not None and messages[0].get("role") == "system" \
                and messages[0].get("content") != recorded:
            return f"the {role} prompt changed"
        return None

    def changed_turn(self, descriptor: Mapping[str, Any], role: str) -> tuple[int, str, str, str] | None:
        """The first transcript turn of a customer or agent request whose text differs from the recording's:
        (turn number, recorded text, new text, "agent" or "customer")."""
        if self.existing is None or role not in ("client", "agent"):
            return None
        from pytest_llmsim.model.prompts import OPENING_CUE

        history = [m for m in list(descriptor.get("messages") or [])[1:] if m.get("content") != OPENING_CUE]
        for number, (now, then) in enumerate(zip(history, self.existing.transcript, strict=False), start=1):
            heard = heard_text(then)  # a multi-agent turn as the other side is sent it: ``Billing: ...``
            if str(now.get("content")) != heard:
                speaker = "agent" if then.get("role") == "agent" else "customer"
                return number, heard, str(now.get("content")), speaker
        return None

    # -- collecting --
    def add(self, key: str, descriptor: Mapping[str, Any], response: Mapping[str, Any], label: str, role: str,
            endpoint: str = "") -> None:
        self._calls.append((key, descriptor, response, label, role, endpoint))
        if self.existing is None or key not in self.existing.replies:
            self._all_replayed = False  # (the recording answers first: a key it holds was answered by it)

    def trusts_the_file(self) -> bool:
        """This run replayed the recording as it is and will not rewrite it (``none``, ``changed``, or ``new`` with a
        recording): every call was answered by the file, so its verdict and transcript must be what they give."""
        return (self.existing is not None and bool(self._calls) and self._all_replayed
                and self.mode.trusts_replayed_recordings())

    @property
    def left_the_recording(self) -> bool:
        """Some call of this conversation was not answered by the scenario's recording (or it has none)."""
        return bool(self._calls) and not self._all_replayed

    def disagreement(self, result: ScenarioResult) -> str | None:
        """Where the recording's verdict or transcript differs from what replaying its calls gave (``result``),
        worded for people: the file, the field, both values; None when they agree (or it was not a pure replay).
        A replay that errored is reported as is, unless the file claims a score for it."""
        if not self.trusts_the_file() or result.status == Status.SKIPPED:
            return None
        if result.status == Status.ERROR and str(result.error_kind or "") not in RECORDABLE_ERRORS:
            return None  # (a miss, an endpoint or agent failure: the replay stopped early and says why)
        assert self.existing is not None
        data = self.existing.data
        verdict = data["verdict"]
        was, now = verdict["status"], str(result.status)
        if (was == Status.ERROR) != (now == Status.ERROR):
            if now == Status.ERROR:
                return None  # the replay errors anyway: never a pass
            return (f"field 'verdict.status' says {was} ({verdict.get('error_kind') or 'error'}) but the recorded "
                    f"calls give {now} with score {result.score}")
        if now != Status.ERROR:
            if verdict.get("score") != result.score:
                return (f"field 'verdict.score' says {verdict.get('score')} but the recorded evaluator reply "
                        f"scores {result.score}")
            if (verdict.get("comment") or "") != (result.comment or ""):
                return (f"field 'verdict.comment' says {_shorten(str(verdict.get('comment') or ''))!r} but the "
                        f"recorded evaluator reply says {_shorten(result.comment or '')!r}")
        recorded, replayed = self.existing.transcript, result.transcript
        for index, (then, now_turn) in enumerate(zip(recorded, replayed, strict=False)):
            for name, was_part, now_part in (("role", str(then.get("role")), str(now_turn.get("role"))),
                                             ("text", str(then.get("text")), str(now_turn.get("text"))),
                                             ("tool_calls", _calls_seen(then), _calls_seen(now_turn)),
                                             ("messages", routing_text(then), routing_text(now_turn))):
                if was_part != now_part:
                    speaker = "agent" if now_turn.get("role") == "agent" else "customer"
                    return (f"field 'transcript[{index}].{name}' says {_shorten(was_part)!r} but the recorded "
                            f"{speaker} reply gives {_shorten(now_part)!r}")
        if len(recorded) != len(replayed):
            return f"field 'transcript' has {len(recorded)} turns but the recorded calls give {len(replayed)}"
        return None

    @property
    def calls(self) -> int:
        return len(self._calls)

    def may_write(self) -> bool:
        if self.exclusive or not self.mode.may_call_network():
            return False
        return self.mode.rewrites_recordings() or not self.path.exists()

    def document(self, result: ScenarioResult, roles: Mapping[str, Mapping[str, Any]],
                 scrub: Callable[[str], str] = lambda text: text) -> dict[str, Any]:
        """The recording of ``result`` and the calls collected, as the file holds it (see the module doc)."""
        prefix = f"{self.nodeid} "
        data: dict[str, Any] = {"llmsim_recording": FORMAT, "nodeid": self.nodeid, "scenario": self.scenario}
        if self.item != self.nodeid:
            data["item"] = self.item
        data["endpoint"] = self.endpoint
        data["roles"] = {role: dict(values) for role, values in roles.items()}
        verdict: dict[str, Any] = {"status": str(result.status)}
        if result.status == Status.ERROR:
            verdict["error_kind"] = str(result.error_kind or "")
            verdict["error"] = text_value(result.error_message)
        else:
            verdict.update(score=result.score, min_score=result.min_score, comment=text_value(result.comment))
        data["verdict"] = verdict
        if result.metrics:
            data["metrics"] = [{**metric, "reason": text_value(str(metric.get("reason", "")))}
                               for metric in result.metrics]
        data["ended_by"], data["end_reason"] = result.ended_by, result.end_reason
        if self._timeout is not None:
            data["timeout"] = dict(self._timeout)
        data["transcript"] = [_turn(turn) for turn in result.transcript]
        prompts: dict[str, str | list[str]] = {}
        calls = []
        for key, descriptor, response, label, role, endpoint in self._calls:
            messages = descriptor.get("messages") or []
            if role not in prompts and messages and messages[0].get("role") == "system":
                prompts[role] = text_value(scrub(str(messages[0].get("content", ""))))
            call: dict[str, Any] = {"call": label.removeprefix(prefix), "role": role,
                                    "model": str(descriptor.get("model") or "")}
            if endpoint:
                call["endpoint"] = endpoint
            for name in ("temperature", "max_tokens", "seed"):
                if descriptor.get(name) is not None:
                    call[name] = descriptor[name]
            if (fmt := _format_name(descriptor)) is not None:
                call["format"] = fmt
            if descriptor.get("attempt"):
                call["attempt"] = descriptor["attempt"]
            call["messages"] = len(messages)
            call["key"] = key
            call["reply"] = text_value(scrub(str(response.get("text", ""))))
            if response.get("tool_calls"):
                call["tool_calls"] = response["tool_calls"]
            if response.get("logprobs") is not None:  # (only when asked for and sent: files stay as they were)
                call["logprobs"] = response["logprobs"]
            if response.get("end"):
                call["end"] = True
            for name in ("name", "agent_messages", "handoffs"):  # only when present: other files stay as they were
                if response.get(name):
                    call[name] = response[name]
            call["usage"] = {"prompt_tokens": int(response.get("prompt_tokens") or 0),
                             "completion_tokens": int(response.get("completion_tokens") or 0)}
            if response.get("cached_input_tokens"):  # (only when the provider reported some: files stay as they were)
                call["usage"]["cached_input_tokens"] = int(response["cached_input_tokens"])
            if response.get("model") and response.get("model") != call["model"]:
                call["reply_model"] = str(response["model"])
            calls.append(call)
        data["prompts"] = prompts
        data["calls"] = calls
        return data

    def finish(self, result: ScenarioResult, roles: Mapping[str, Mapping[str, Any]],
               scrub: Callable[[str], str] = lambda text: text) -> str:
        """Write the recording when the mode allows and the result is worth keeping; what happened, in a word:
        ``written``, ``unchanged``, ``replayed`` (left as it was) or ``""`` (nothing to record). Record mode
        ``changed`` words it for a pull request: ``replayed unchanged``, ``judged live`` (the conversation changed
        and its recording is rewritten; ``judged from the cache`` when the disk cache answered what the recording
        lacked), ``not written: changed, not judged`` (``unjudged``)."""
        state = self._finish(result, roles, scrub)
        if self.mode is not RecordMode.CHANGED or not state:
            return state
        if state == "replayed" and result.status in (Status.PASSED, Status.FAILED) and not self.left_the_recording:
            return REPLAYED_UNCHANGED
        if state in ("written", "unchanged"):
            live = any(usage.get("live_calls") if isinstance(usage, Mapping) else getattr(usage, "live_calls", 0)
                       for usage in result.usage)
            return JUDGED_LIVE if live else JUDGED_FROM_CACHE
        return state

    def _finish(self, result: ScenarioResult, roles: Mapping[str, Mapping[str, Any]],
                scrub: Callable[[str], str]) -> str:
        problem = self.disagreement(result)
        if problem is not None:  # what a reviewer reads is not what the replay decided: neither is a verdict
            result.status, result.error_kind = Status.ERROR, ErrorKind.RECORDING
            result.error_message = scrub(f"{self.item}: {_where(self.path)}: {problem}; {_RESTORE}")
            result.score = None
            return "replayed"
        if str(result.error_kind or "") == ErrorKind.UNJUDGED:
            return NOT_JUDGED
        recordable = result.status in (Status.PASSED, Status.FAILED) or (
            result.status == Status.ERROR and str(result.error_kind or "") in RECORDABLE_ERRORS)
        if not recordable or not self._calls or not self.may_write() or self.trusts_the_file():
            return "replayed" if self.existing is not None else ""
        return "written" if write_if_changed(self.path, render(self.document(result, roles, scrub))) else "unchanged"


# Recording states of record mode ``changed`` (``ScenarioRecorder.finish``), read by the pull-request summary.
REPLAYED_UNCHANGED = "replayed unchanged"
JUDGED_LIVE = "judged live"
JUDGED_FROM_CACHE = "judged from the cache"
NOT_JUDGED = "not written: changed, not judged"


@dataclass
class ChangedConversations:
    """What a record mode ``changed`` run did with each conversation (``changed_conversations``): item names;
    ``judged`` with each one's live cost (USD)."""

    replayed: list[str] = field(default_factory=list)
    judged: list[tuple[str, float]] = field(default_factory=list)
    unjudged: list[str] = field(default_factory=list)

    @property
    def judged_cost(self) -> float:
        return sum(cost for _, cost in self.judged)

    def text(self, names: Callable[[list[str]], str] = ", ".join, limit: int | None = None) -> str:
        """One line: ``3 replayed unchanged (no live call); 2 changed and judged live ($0.000120): a ($0.000060),
        b ($0.000060); 1 changed but not judged: c`` (``names`` joins the names, e.g. escaped for markdown;
        ``limit``: at most this many judged ones named)."""
        parts = [f"{len(self.replayed)} conversation(s) replayed unchanged (no live call)"]
        shown = self.judged if limit is None else self.judged[:limit]
        judged = ", ".join(f"{names([name])} (${cost:.6f})" for name, cost in shown)
        if len(shown) < len(self.judged):
            judged += f" and {len(self.judged) - len(shown)} more"
        parts.append(f"{len(self.judged)} changed and judged live (${self.judged_cost:.6f})"
                     + (f": {judged}" if judged else ""))
        if self.unjudged:
            parts.append(f"{len(self.unjudged)} changed but NOT judged (unjudged, never a pass): "
                         f"{names(self.unjudged)}")
        return "; ".join(parts)


def changed_conversations(records: Iterable[Any]) -> ChangedConversations | None:
    """The record mode ``changed`` figures of a run's ``ScenarioRecord``s (from their recording states, which travel
    on xdist's reports), or None when no record carries one (another record mode)."""
    found = ChangedConversations()
    any_state = False
    for record in records:
        result = record.result
        states = [str(trial.get("recording_state") or "") for trial in result.trials] or [result.recording_state]
        if not any(state in (REPLAYED_UNCHANGED, JUDGED_LIVE, JUDGED_FROM_CACHE, NOT_JUDGED) for state in states):
            continue
        any_state = True
        if NOT_JUDGED in states or str(result.error_kind or "") == ErrorKind.UNJUDGED:
            found.unjudged.append(record.nodeid)
        elif JUDGED_LIVE in states or JUDGED_FROM_CACHE in states:
            found.judged.append((record.nodeid, float(getattr(record, "cost_usd", 0.0) or 0.0)))
        elif all(state == REPLAYED_UNCHANGED for state in states):
            found.replayed.append(record.nodeid)
    return found if any_state else None


def _turn(turn: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"role": turn.get("role"), "text": text_value(str(turn.get("text", "")))}
    if turn.get("tool_calls"):
        data["tool_calls"] = [dict(call) for call in turn["tool_calls"]]
    if turn.get("scripted"):
        data["scripted"] = True
    if turn.get("messages"):  # a multi-agent turn: who said what, then who handed the turn to whom
        data["messages"] = [{**message, "content": text_value(str(message.get("content") or ""))}
                            for message in turn["messages"]]
    if turn.get("handoffs"):
        data["handoffs"] = [dict(handoff) for handoff in turn["handoffs"]]
    return data


def _calls_seen(turn: Mapping[str, Any]) -> str:
    """A turn's tool calls as the judge's transcript shows them (``tool_call_text``): a python agent's tool result
    may differ past what the judge sees on every run, which no replay reproduces and re-recording cannot fix."""
    return " ".join(f"[tool {tool_call_text(call)}]" for call in turn_tool_calls(turn))


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- unused recordings -------------------------------------------------------------------------------------------
def unused_recordings(root: Path, rootdir: Path, *, expected: Iterable[Path], collected_files: Iterable[str],
                      broken_files: Iterable[str] = ()) -> list[Path]:
    """Recordings no collected scenario uses: under a collected scenario file's directory but not expected by
    any of its scenarios, or belonging to a file that no longer exists. Files that failed to collect keep
    theirs (a syntax error must not make a whole file's recordings look unused)."""
    wanted = set(expected)  # built from ``root`` like the paths walked below: compared as they are
    collected = set(collected_files) - set(broken_files)
    broken = set(broken_files)
    unused = []
    for path in iter_recordings(root):
        source = source_of(root, path)
        if source in broken:
            continue
        if source in collected:
            if path not in wanted:
                unused.append(path)
        elif not (rootdir / source).exists():
            unused.append(path)
    return unused


def prune(paths: Iterable[Path], root: Path) -> int:
    """Delete ``paths`` and the directories under ``root`` they leave empty; the number deleted."""
    removed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
        parent = path.parent
        while parent != root and root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
    return removed
