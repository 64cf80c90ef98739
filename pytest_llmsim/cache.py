"""Seeded disk cache of LLM calls (diskcache, safe across processes).

The key is a SHA-256 of everything that decides a reply: cache format version, endpoint identity, model,
messages, temperature, seed, max tokens, response format, tools and attempt index. Credentials never enter
the key or the stored value. Each stored value keeps its request descriptor (no secrets) so that a miss in
replay-only mode can say which recorded call is closest and what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import diskcache

from .settings import RecordMode

CACHE_FORMAT_VERSION = 1
_KEY_FIELDS = ("endpoint", "model", "messages", "temperature", "seed", "max_tokens",
               "response_format", "tools", "attempt")


def request_key(descriptor: dict[str, Any]) -> str:
    payload = {"v": CACHE_FORMAT_VERSION, **{k: descriptor.get(k) for k in _KEY_FIELDS}}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def marker_key(kind: str, payload: dict[str, Any]) -> str:
    """Key of a non-call record (e.g. where a conversation timed out), hashed like a request key."""
    blob = json.dumps({"v": CACHE_FORMAT_VERSION, "marker": kind, **payload}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def describe_difference(wanted: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """Human-readable list of key fields that differ between two request descriptors."""
    diffs = []
    for name in _KEY_FIELDS:
        a, b = wanted.get(name), recorded.get(name)
        if a == b:
            continue
        if name == "messages" and isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                diffs.append(f"messages: {len(a)} wanted vs {len(b)} recorded")
                continue
            for i, (ma, mb) in enumerate(zip(a, b, strict=True)):
                if ma != mb:
                    text = str(ma.get("content", ""))[:60]
                    diffs.append(f"messages[{i}] ({ma.get('role')}) differs, wanted starts {text!r}")
                    break
        else:
            diffs.append(f"{name}: wanted {a!r}, recorded {b!r}")
    return diffs


class CallCache:
    """Record-mode-aware wrapper over a diskcache directory."""

    def __init__(self, directory: Path, mode: RecordMode) -> None:
        self.directory = Path(directory)
        self.mode = mode
        self._cache = diskcache.Cache(str(self.directory), size_limit=2**34, eviction_policy="none")

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The stored response for ``key``, or None. Mode ``all`` never replays."""
        if self.mode is RecordMode.ALL:
            return None
        entry = self._cache.get(key)
        return entry["response"] if entry is not None else None

    @property
    def may_call_network(self) -> bool:
        return self.mode is not RecordMode.NONE

    def store(self, key: str, descriptor: dict[str, Any], response: dict[str, Any], label: str) -> None:
        self._cache.set(key, {"request": descriptor, "response": response, "label": label})

    def closest(self, descriptor: dict[str, Any], label: str) -> tuple[str, list[str]] | None:
        """The recorded call most like ``descriptor`` (same label preferred) and what differs."""
        best: tuple[tuple[int, int], str, list[str]] | None = None
        for key in self._cache.iterkeys():
            entry = self._cache.get(key)
            if not isinstance(entry, dict) or "request" not in entry:
                continue
            diffs = describe_difference(descriptor, entry["request"])
            rank = (0 if entry.get("label") == label else 1, len(diffs))
            if best is None or rank < best[0]:
                best = (rank, str(entry.get("label", "?")), diffs)
        return None if best is None else (best[1], best[2])

    def lookup_marker(self, key: str) -> dict[str, Any] | None:
        if self.mode is RecordMode.ALL:
            return None
        entry = self._cache.get(key)
        return entry.get("marker") if isinstance(entry, dict) else None

    def store_marker(self, key: str, marker: dict[str, Any]) -> None:
        if self.may_call_network:
            self._cache.set(key, {"marker": marker})

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
