"""Seeded disk cache of LLM calls (diskcache, safe across processes, data only).

Why one module: the cache key, the stored format and the checks of an untrusted cache directory change together (a
format bump touches all three), so they are one unit.

The key is a SHA-256 of everything that decides a reply: cache format version, endpoint identity, model,
messages, temperature, seed, max tokens, response format, tools and attempt index. Credentials never enter
the key or the stored value: every value is passed through the run's scrubber (``scrub``, see
``scrubbing.RunSecrets``) before it is stored, so a key or token an endpoint or agent echoed is kept as ``***``.
Each stored value keeps its request descriptor so that a miss in replay-only mode can say which recorded call
is closest and what differs.

The cache is a local store (add ``.llmsim_cache/`` to ``.gitignore``; what is committed is ``recordings/``), but
a directory may come from anywhere (a CI cache, a colleague's copy), so it is treated as untrusted input:

* values are zlib-compressed JSON (:class:`JsonDisk`); nothing is ever unpickled. A row that diskcache
  pickled (an older llmsim cache, another tool's cache, a crafted row) is a *foreign* entry;
* every entry read is checked for the shape llmsim wrote (format version, fields and their types); anything
  else is a *corrupt* entry. Record mode ``once``/``all`` treats such an entry as a miss and overwrites it;
  ``none`` raises :class:`~pytest_llmsim.errors.CacheError` naming the directory and the call;
* ``cache.db`` is checked before diskcache opens it (SQLite header, truncation, diskcache's ``Settings``
  table, whose ``sqlite_*`` rows diskcache would run as PRAGMAs);
* a cache directory that cannot be written (a read-only checkout or mount, another user's files) opens
  read-only: lookups and :meth:`CallCache.closest` work, replies to misses are returned but not stored
  (:attr:`CallCache.unstored` counts them).

A cache that cannot be used at all (the path is a file, ``cache.db`` is not a database or is truncated, the
directory cannot be created) raises ``CacheError`` from ``CallCache(...)`` with one line naming the
directory and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import DBNAME, DEFAULT_SETTINGS, METADATA, MODE_BINARY, MODE_RAW, UNKNOWN

from pytest_llmsim.errors import CacheError
from pytest_llmsim.model.settings import RecordMode

# 2: JSON values (JsonDisk) with a format field; version 1 entries were pickled by diskcache.
CACHE_FORMAT_VERSION = 2
_KEY_FIELDS = ("endpoint", "model", "messages", "temperature", "seed", "max_tokens",
               "response_format", "tools", "attempt")
# Key fields hashed only when a request sets them, so that the keys of every other request stay as they were:
# ``logprobs`` (the number of top log probabilities asked for) changes what the reply holds.
_OPTIONAL_KEY_FIELDS = ("logprobs",)
_MAX_VALUE_BYTES = 64 * 2**20  # a decompressed entry larger than this is corrupt (zlib bomb guard)
_DISKCACHE_SETTINGS = {
    "size_limit": 2**34,
    "eviction_policy": "none",
    "statistics": 0,
    "tag_index": 0,
    "cull_limit": 10,
    "disk_min_file_size": 2**30,  # keep every value inside cache.db: one file
}
_RESPONSE_FIELDS: dict[str, tuple[type, ...]] = {
    "text": (str,), "prompt_tokens": (int,), "completion_tokens": (int,), "latency_s": (int, float),
    "model": (str, type(None)),
}
_PRAGMA_VALUE = re.compile(r"-?[A-Za-z0-9_]+")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_RECORD_HINT = "re-record with --llmsim-record=once"


# One encoder for every key (``json.dumps`` with options builds a new encoder per call: a third of its cost).
_KEY_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode
_MARKER_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode


def request_key(descriptor: dict[str, Any]) -> str:
    get = descriptor.get
    payload = {"v": CACHE_FORMAT_VERSION, **{k: get(k) for k in _KEY_FIELDS}}
    for name in _OPTIONAL_KEY_FIELDS:
        if get(name) is not None:
            payload[name] = get(name)
    return hashlib.sha256(_KEY_JSON(payload).encode("utf-8")).hexdigest()


def marker_key(kind: str, payload: dict[str, Any]) -> str:
    """Key of a non-call record (e.g. where a conversation timed out), hashed like a request key."""
    blob = _MARKER_JSON({"v": CACHE_FORMAT_VERSION, "marker": kind, **payload})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def describe_difference(wanted: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """Human-readable list of key fields that differ between two request descriptors."""
    diffs = []
    for name in _KEY_FIELDS + _OPTIONAL_KEY_FIELDS:
        a, b = wanted.get(name), recorded.get(name)
        if a == b:
            continue
        if name == "messages" and isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                diffs.append(f"messages: {len(a)} wanted vs {len(b)} recorded")
                continue
            for i, (ma, mb) in enumerate(zip(a, b, strict=True)):
                if ma != mb:
                    text = str(ma.get("content", ""))[:60] if isinstance(ma, dict) else str(ma)[:60]
                    role = ma.get("role") if isinstance(ma, dict) else "?"
                    diffs.append(f"messages[{i}] ({role}) differs, wanted starts {text!r}")
                    break
        else:
            diffs.append(f"{name}: wanted {a!r}, recorded {b!r}")
    return diffs


# --- values: JSON only ---------------------------------------------------------------------------------


class CorruptEntry(Exception):
    """A stored row that is not an llmsim entry of this format (foreign, pickled, damaged). Internal."""


_FOREIGN_KEY = object()  # what JsonDisk.get returns for a key diskcache pickled (never unpickled)


def encode_value(value: Any) -> bytes:
    """The bytes stored for ``value``: zlib-compressed UTF-8 JSON."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return zlib.compress(text.encode("utf-8"), 1)


def decode_row(directory: str | os.PathLike[str], mode: Any, filename: Any, value: Any) -> Any:
    """Decode one ``Cache`` row's (mode, filename, value) as JSON; raise :class:`CorruptEntry` otherwise.

    Only two storage forms are ever produced by :class:`JsonDisk`: bytes inline (``MODE_RAW``) and bytes in
    a file under the cache directory (``MODE_BINARY``). Pickled rows (``MODE_PICKLE``), text, numbers and
    anything else are rejected without being interpreted.
    """
    if mode == MODE_RAW and isinstance(value, bytes):
        data = value
    elif mode == MODE_BINARY and isinstance(filename, str) and filename:
        try:
            base = Path(directory).resolve()
            path = (base / filename).resolve()
            if base not in path.parents:
                raise CorruptEntry(f"its value file {filename!r} is outside the cache directory")
            data = path.read_bytes()
        except (OSError, RuntimeError, ValueError) as exc:
            raise CorruptEntry(f"its value file {filename!r} cannot be read ({exc})") from None
    else:
        raise CorruptEntry(f"it is stored as diskcache mode {mode!r} (a pickle or a foreign format), not JSON")
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data, _MAX_VALUE_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise CorruptEntry("its value is truncated or too large")
        return json.loads(raw.decode("utf-8"))
    except CorruptEntry:
        raise
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptEntry(f"its value is not compressed JSON ({type(exc).__name__})") from None


class JsonDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache is untyped: an Any base
    """diskcache serialization that stores str keys raw and values as compressed JSON and never unpickles.

    ``fetch`` raises :class:`CorruptEntry` for any row it did not write (diskcache's ``Cache.get`` passes it
    through); ``get`` returns a placeholder, not the key, for a key diskcache pickled.
    """

    def __init__(self, directory: str, min_file_size: int = 0, pickle_protocol: int = 0, **_ignored: Any) -> None:
        super().__init__(directory, min_file_size=min_file_size, pickle_protocol=0)

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"llmsim cache keys are str, got {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        return key if raw and isinstance(key, str) else _FOREIGN_KEY

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if read:
            raise TypeError("llmsim cache values are JSON data, not files")
        stored: tuple[int, int, str | None, Any] = super().store(encode_value(value), False, key=key)
        return stored

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        return decode_row(self._directory, mode, filename, value)


# --- entries: shape checks ------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(entry: Any, kind: str) -> dict[str, Any]:
    """``entry`` if it is a well-formed entry of ``kind`` ('call' or 'marker'); else raise CorruptEntry."""
    if not isinstance(entry, dict):
        raise CorruptEntry(f"it holds a {type(entry).__name__}, not an llmsim entry")
    if entry.get("v") != CACHE_FORMAT_VERSION:
        raise CorruptEntry(f"its format version is {entry.get('v')!r}, not {CACHE_FORMAT_VERSION}")
    if entry.get("kind") != kind:
        raise CorruptEntry(f"it is a {entry.get('kind')!r} entry where a {kind!r} entry was expected")
    if kind == "marker":
        marker = entry.get("marker")
        if not isinstance(marker, dict) or not all(isinstance(k, str) for k in marker):
            raise CorruptEntry("its 'marker' is not a mapping")
        if "turns" in marker and not (_is_int(marker["turns"]) and marker["turns"] >= 0):
            raise CorruptEntry("its 'marker.turns' is not a non-negative integer")
        return entry
    request, response, label = entry.get("request"), entry.get("response"), entry.get("label")
    if not isinstance(request, dict):
        raise CorruptEntry("its 'request' is not a mapping")
    messages = request.get("messages")
    if messages is not None and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        raise CorruptEntry("its 'request.messages' is not a list of mappings")
    if not isinstance(label, str):
        raise CorruptEntry("its 'label' is not a string")
    if not isinstance(response, dict):
        raise CorruptEntry("its 'response' is not a mapping")
    for name, types in _RESPONSE_FIELDS.items():
        field = response.get(name)
        if not isinstance(field, types) or (isinstance(field, bool) and bool not in types):
            raise CorruptEntry(f"its 'response.{name}' is missing or not a {types[0].__name__}")
    if "logprobs" in response and not isinstance(response["logprobs"], list):
        raise CorruptEntry("its 'response.logprobs' is not a list")
    return entry


# --- the database file ---------------------------------------------------------------------------------


def _db_message(directory: Path, problem: str) -> str:
    return (f"llmsim cache {directory}: {DBNAME} {problem}; delete {directory} (or point --llmsim-cache-dir "
            f"elsewhere) and {_RECORD_HINT}")


def _holds_data(path: Path) -> bool:
    """Whether ``path`` exists and is not empty. Another process closing the database removes its
    write-ahead log at any moment, so a vanished file is an empty one, never an error."""
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _check_database_file(directory: Path) -> None:
    """Raise CacheError if ``cache.db`` is not an SQLite database or is visibly truncated (header only)."""
    db = directory / DBNAME
    try:
        size = db.stat().st_size
        if size == 0:
            return
        with db.open("rb") as fh:
            header = fh.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CacheError(f"llmsim cache {directory}: {DBNAME} cannot be read ({exc.strerror}); "
                         f"fix its permissions or point --llmsim-cache-dir elsewhere") from None
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise CacheError(_db_message(directory, "is not an SQLite database (garbage or truncated)"))
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise CacheError(_db_message(directory, "has a damaged header"))
    pages = int.from_bytes(header[28:32], "big")
    header_size_valid = pages > 0 and header[24:28] == header[92:96]
    wal = directory / (DBNAME + "-wal")
    # a write in progress (write-ahead log or rollback journal) may not have extended the file yet
    settled = not _holds_data(wal) and not (directory / (DBNAME + "-journal")).exists()
    if size % page_size or (header_size_valid and settled and size < pages * page_size):
        raise CacheError(_db_message(directory, f"is truncated ({size} bytes, expected {pages * page_size})"))


def _check_settings_rows(directory: Path, rows: list[tuple[Any, Any]]) -> None:
    """diskcache turns ``Settings`` rows into attributes and runs ``sqlite_*`` ones as PRAGMAs: allow only
    diskcache's own keys with plain values."""
    known = set(DEFAULT_SETTINGS) | set(METADATA)
    for key, value in rows:
        if key not in known:
            raise CacheError(_db_message(directory, f"is not a diskcache database (unknown setting {key!r})"))
        if str(key).startswith("sqlite_") and not (
            isinstance(value, int | float) or (isinstance(value, str) and _PRAGMA_VALUE.fullmatch(value))
        ):
            raise CacheError(_db_message(directory, f"has an invalid setting {key}={value!r}"))


def _ro_uri(db: Path, immutable: bool) -> str:
    return f"file:{urllib.parse.quote(str(db))}?mode=ro" + ("&immutable=1" if immutable else "")


def _connect_read_only(directory: Path) -> tuple[sqlite3.Connection | None, tempfile.TemporaryDirectory[str] | None]:
    """A read-only connection to ``cache.db`` (None if it does not exist), its Settings table checked, and
    the temporary directory it lives in if it had to be copied.

    ``mode=ro`` sees a write-ahead log left next to the database but needs SQLite's shared-memory file; in a
    read-only directory without one it fails. Then ``immutable=1`` (no locking, nothing written) is used, or,
    if a non-empty write-ahead log holds part of the data, a private copy of the database and its log.
    """
    db = directory / DBNAME
    if not db.exists():
        return None, None
    wal = directory / (DBNAME + "-wal")
    last: sqlite3.Error | None = None
    for attempt in ("ro", "immutable", "copy"):
        copy: tempfile.TemporaryDirectory[str] | None = None
        if attempt == "copy":
            if not _holds_data(wal):
                break
            copy = tempfile.TemporaryDirectory(prefix="llmsim-cache-")
            try:
                shutil.copyfile(db, Path(copy.name) / DBNAME)
                shutil.copyfile(wal, Path(copy.name) / wal.name)
            except OSError as exc:
                copy.cleanup()
                raise CacheError(f"llmsim cache {directory}: {DBNAME} cannot be read ({exc}); fix its "
                                 f"permissions or point --llmsim-cache-dir elsewhere") from None
            uri = _ro_uri(Path(copy.name) / DBNAME, immutable=False)
        elif attempt == "immutable" and _holds_data(wal):
            continue  # immutable=1 would ignore the log's data
        else:
            uri = _ro_uri(db, immutable=attempt == "immutable")
        con: sqlite3.Connection | None = None
        try:
            con = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "Settings" in tables:
                _check_settings_rows(directory, con.execute("SELECT key, value FROM Settings").fetchall())
            if "Cache" in tables:
                con.execute("SELECT key, raw, expire_time, mode, filename, value FROM Cache LIMIT 1").fetchall()
            return con, copy
        except CacheError:
            _discard(con, copy)
            raise
        except sqlite3.OperationalError as exc:
            _discard(con, copy)
            last = exc
            if "no such column" in str(exc):
                break
        except sqlite3.DatabaseError as exc:
            _discard(con, copy)
            raise CacheError(_db_message(directory, f"is corrupt ({exc})")) from None
    raise CacheError(_db_message(directory, f"cannot be read ({last})"))


def _discard(con: sqlite3.Connection | None, copy: tempfile.TemporaryDirectory[str] | None) -> None:
    if con is not None:
        con.close()
    if copy is not None:
        copy.cleanup()


class _ReadOnlyStore:
    """Lookups straight from diskcache's ``Cache`` table over a read-only SQLite connection."""

    def __init__(self, directory: Path, con: sqlite3.Connection | None,
                 copy: tempfile.TemporaryDirectory[str] | None = None) -> None:
        self.directory = directory
        self._con = con
        self._copy = copy
        self._lock = threading.Lock()
        self._has_table = con is not None and con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Cache'").fetchone() is not None

    def get(self, key: str) -> Any:
        """The decoded value of ``key``, ``_MISSING``, or raise CorruptEntry."""
        if type(key) is not str:
            raise TypeError(f"llmsim cache keys are str, got {type(key).__name__}")
        con = self._con
        if con is None or not self._has_table:
            return _MISSING
        with self._lock:
            rows = con.execute(
                "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
                " AND (expire_time IS NULL OR expire_time > ?)", (key, time.time())).fetchall()
        if not rows:
            return _MISSING
        return decode_row(self.directory, *rows[0])

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, decoded value or CorruptEntry) of every row."""
        con = self._con
        if con is None or not self._has_table:
            return
        with self._lock:
            rows = con.execute("SELECT key, raw, mode, filename, value FROM Cache").fetchall()
        for key, raw, mode, filename, value in rows:
            if not raw or not isinstance(key, str):
                yield _FOREIGN_KEY, CorruptEntry("its key was pickled")
                continue
            try:
                yield key, decode_row(self.directory, mode, filename, value)
            except CorruptEntry as exc:
                yield key, exc

    def __len__(self) -> int:
        con = self._con
        if con is None or not self._has_table:
            return 0
        with self._lock:
            return int(con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0])

    def close(self) -> None:
        _discard(self._con, self._copy)
        self._con, self._copy, self._has_table = None, None, False


_MISSING = object()


def _writable(directory: Path) -> bool:
    db = directory / DBNAME
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    return not (db.exists() and not os.access(db, os.W_OK))


# --- the cache ------------------------------------------------------------------------------------------


class CallCache:
    """Record-mode-aware wrapper over a diskcache directory.

    ``read_only`` is True when the directory (or its ``cache.db``) cannot be written: lookups still work,
    ``store``/``store_marker`` count the replies they could not keep in ``unstored`` instead of failing
    (``store_error`` says why). ``corrupt`` counts corrupt or foreign entries met by lookups in record
    modes that re-record them.
    """

    def __init__(self, directory: Path, mode: RecordMode, scrub: Callable[[Any], Any] | None = None) -> None:
        self.directory = Path(directory)
        self.mode = mode
        # Applied to every value before it is stored (the run's ``RunSecrets.scrub_data``): no secret on disk.
        self.scrub: Callable[[Any], Any] = scrub if scrub is not None else (lambda value: value)
        self.read_only = False
        self.unstored = 0
        self.store_error: str | None = None
        self.corrupt = 0
        self.foreign_seen = 0  # rows the last ``closest`` scan skipped as corrupt or foreign
        self._cache: diskcache.Cache | None = None
        self._reader: _ReadOnlyStore | None = None
        d = self.directory
        if d.exists() and not d.is_dir():
            raise CacheError(f"llmsim cache directory {d} is a file, not a directory: remove it or point "
                             f"--llmsim-cache-dir elsewhere")
        if not d.exists():
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(f"llmsim cache directory {d} cannot be created ({exc.strerror or exc}): create "
                                 f"it or point --llmsim-cache-dir at a writable directory") from None
        _check_database_file(d)
        opened = _connect_read_only(d)  # also vets diskcache's Settings rows before diskcache acts on them
        if not _writable(d):
            self._open_read_only(*opened)
            return
        _discard(*opened)
        try:
            self._cache = diskcache.Cache(str(d), disk=JsonDisk, **_DISKCACHE_SETTINGS)
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) and "read-only" not in str(exc):
                raise CacheError(f"llmsim cache {d} cannot be opened ({exc}): check the directory or point "
                                 f"--llmsim-cache-dir elsewhere") from None
            self._open_read_only(*_connect_read_only(d))
        except sqlite3.DatabaseError as exc:
            raise CacheError(_db_message(d, f"is corrupt ({exc})")) from None
        except (OSError, diskcache.Timeout) as exc:
            raise CacheError(f"llmsim cache {d} cannot be opened ({exc}): check the directory or point "
                             f"--llmsim-cache-dir elsewhere") from None

    def _open_read_only(self, con: sqlite3.Connection | None,
                        copy: tempfile.TemporaryDirectory[str] | None = None) -> None:
        self.read_only = True
        self.store_error = f"the cache directory {self.directory} is read-only"
        self._reader = _ReadOnlyStore(self.directory, con, copy)

    @property
    def may_call_network(self) -> bool:
        """The mode lets an unrecorded call go to the endpoint (``RecordMode.may_call_network``; the client also
        asks whether the endpoint was configured, for ``changed``)."""
        return self.mode.may_call_network()

    # -- reading --

    def _get(self, key: str) -> Any:
        try:
            if self._reader is not None:
                return self._reader.get(key)
            assert self._cache is not None
            return self._cache.get(key, default=_MISSING)
        except sqlite3.DatabaseError as exc:
            raise CacheError(_db_message(self.directory, f"cannot be read ({exc})")) from None

    def _entry(self, key: str, kind: str, label: str | None) -> dict[str, Any] | None:
        """The checked entry of ``key``, None on a miss; a corrupt entry is a miss (to be re-recorded) unless
        the mode is replay-only, where it is a CacheError."""
        try:
            value = self._get(key)
            return None if value is _MISSING else _check_entry(value, kind)
        except CorruptEntry as exc:
            if self.mode.corrupt_entry_is_error():
                what = f"{label}: " if label else ""
                raise CacheError(f"{what}corrupt or foreign entry {key[:12]} in the llmsim cache {self.directory} "
                                 f"({exc}); {_RECORD_HINT} (needs the endpoint)") from None
            self.corrupt += 1
            return None

    def lookup(self, key: str, *, label: str | None = None) -> dict[str, Any] | None:
        """The stored response for ``key``, or None. Mode ``all`` never replays.

        A corrupt or foreign entry is None (the caller calls the endpoint and ``store`` overwrites it), except
        in mode ``none``, where it raises CacheError naming the directory and ``label``.
        """
        if not self.mode.replays():
            return None
        entry = self._entry(key, "call", label)
        return entry["response"] if entry is not None else None

    def closest(self, descriptor: dict[str, Any], label: str) -> tuple[str, list[str]] | None:
        """The recorded call most like ``descriptor`` (same label preferred) and what differs.

        Corrupt and foreign rows are skipped (``foreign_seen`` counts them)."""
        best: tuple[tuple[int, int], str, list[str]] | None = None
        self.foreign_seen = 0
        for _key, value in self._items():
            try:
                entry = _check_entry(value, "call") if not isinstance(value, CorruptEntry) else None
            except CorruptEntry:
                entry = None
            if entry is None:
                if not _is_marker(value):
                    self.foreign_seen += 1
                continue
            diffs = describe_difference(descriptor, entry["request"])
            rank = (0 if entry["label"] == label else 1, len(diffs))
            if best is None or rank < best[0]:
                best = (rank, entry["label"], diffs)
        return None if best is None else (best[1], best[2])

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every well-formed call entry (corrupt and foreign rows skipped)."""
        for _key, value in self._items():
            if isinstance(value, CorruptEntry):
                continue
            try:
                yield _check_entry(value, "call")
            except CorruptEntry:
                continue

    def _items(self) -> Iterator[tuple[Any, Any]]:
        try:
            if self._reader is not None:
                yield from self._reader.items()
                return
            assert self._cache is not None
            for key in list(self._cache.iterkeys()):
                if key is _FOREIGN_KEY:
                    yield key, CorruptEntry("its key was pickled")
                    continue
                try:
                    value = self._cache.get(key, default=_MISSING)
                except CorruptEntry as exc:
                    value = exc
                if value is not _MISSING:
                    yield key, value
        except sqlite3.DatabaseError as exc:
            raise CacheError(_db_message(self.directory, f"cannot be read ({exc})")) from None

    def lookup_marker(self, key: str, *, label: str | None = None) -> dict[str, Any] | None:
        if not self.mode.replays():
            return None
        entry = self._entry(key, "marker", label)
        return entry["marker"] if entry is not None else None

    # -- writing --

    def _set(self, key: str, value: dict[str, Any]) -> None:
        if type(key) is not str:
            raise TypeError(f"llmsim cache keys are str, got {type(key).__name__}")
        if self._cache is None:
            self.unstored += 1
            return
        value = self.scrub(value)
        try:
            self._cache.set(key, value)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self.unstored += 1
            self.store_error = f"writing to the cache directory {self.directory} failed ({exc})"

    def store(self, key: str, descriptor: dict[str, Any], response: dict[str, Any], label: str) -> None:
        """Keep ``response``; on a read-only or failing cache count it in ``unstored`` instead of raising."""
        self._set(key, {"v": CACHE_FORMAT_VERSION, "kind": "call", "request": descriptor,
                        "response": response, "label": label})

    def store_marker(self, key: str, marker: dict[str, Any]) -> None:
        if self.may_call_network:
            self._set(key, {"v": CACHE_FORMAT_VERSION, "kind": "marker", "marker": marker})

    def __len__(self) -> int:
        try:
            if self._reader is not None:
                return len(self._reader)
            assert self._cache is not None
            return len(self._cache)
        except sqlite3.DatabaseError as exc:
            raise CacheError(_db_message(self.directory, f"cannot be read ({exc})")) from None

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._reader is not None:
            self._reader.close()


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and value.get("v") == CACHE_FORMAT_VERSION and value.get("kind") == "marker"
