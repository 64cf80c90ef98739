"""The secrets of a run, and the scrubber that keeps them out of everything llmsim writes.

A run knows these secrets: the endpoint's API key and its base URL's credentials and query values (the customer
and the judge), every openai agent's key (the value of its ``api_key_env``) and base URL query values, and every
http agent's configured header values (``${VAR}`` read from the environment) and URL credentials. They derive
from the configuration and the scenarios alone, so every process of a run (each xdist worker) knows the same set.

Secrets are scrubbed where they *enter* (a reply as it arrives from an endpoint or an agent, before it joins the
conversation, the cache or a recording: the replayed text is the recorded one, with ``***`` where a secret was)
and again where anything is *written* (the cache's values, results, reports, exports, chat files, logs).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pytest_llmsim.model.settings import EndpointSettings, scrub_secrets, url_secrets

if TYPE_CHECKING:
    from pytest_llmsim.model.scenario import AgentSpec

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOKEN_PART = 8  # a header value's words at least this long are secrets too ("Bearer <token>")


def _expand(text: str) -> str:
    """``text`` with each ``${VAR}`` read from the environment (unset ones left as written)."""
    return _ENV_RE.sub(lambda match: os.environ.get(match.group(1), match.group(0)), text)


def header_secrets(value: str) -> list[str]:
    """A configured header value and its long words (the token of ``Bearer <token>``)."""
    return [value, *(part for part in value.split() if len(part) >= _TOKEN_PART)]


def spec_secrets(spec: AgentSpec | None) -> set[str]:
    """The secrets an agent spec carries or names: an openai agent's key (its ``api_key_env`` variable's value)
    and base URL credentials; an http agent's header values and URL credentials (``${VAR}`` read now)."""
    found: set[str] = set()
    if spec is None:
        return found
    if spec.openai is not None:
        if spec.openai.api_key_env:
            key = os.environ.get(spec.openai.api_key_env)
            if key:
                found.add(key)
        found.update(url_secrets(spec.openai.base_url))
    if spec.http is not None:
        found.update(url_secrets(spec.http.url))
        found.update(url_secrets(_expand(spec.http.url)))
        for raw in spec.http.headers.values():
            value = _expand(raw)
            if not _ENV_RE.search(value):  # a variable not set yet: the driver reports it (and adds it when set)
                found.update(header_secrets(value))
    return found


class RunSecrets:
    """Every secret of one run (thread-safe; it grows as scenarios and agents are registered) and the scrubber
    over them: ``scrub`` for a text, ``scrub_data`` for JSON data (every string in it)."""

    def __init__(self, endpoint: EndpointSettings | None = None, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset(values)
        if endpoint is not None:
            self.add(endpoint.secrets())

    def add(self, values: Iterable[str]) -> None:
        new = {value for value in values if value}
        if new - self._values:
            with self._lock:
                self._values = self._values | new

    def add_spec(self, spec: AgentSpec | None) -> None:
        self.add(spec_secrets(spec))

    def values(self) -> frozenset[str]:
        return self._values

    def scrub(self, text: str) -> str:
        """``text`` with every known secret (and its URL-encoded forms) replaced by ``***``."""
        return scrub_secrets(text, self._values)

    def scrub_data(self, value: Any) -> Any:
        """``value`` (JSON data) with every string scrubbed: a new object where anything changed."""
        return scrub_data(value, self.scrub)


def scrub_data(value: Any, scrub: Callable[[str], str]) -> Any:
    """``value`` (JSON data) with every string, keys included, passed through ``scrub``."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_data(key, scrub): scrub_data(item, scrub) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(item, scrub) for item in value]
    return value


# The HTTP libraries' own loggers: at INFO/DEBUG they log each request's URL (``?api-key=...``) and options.
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "openai", "openai._base_client", "aiohttp.client",
                "aiohttp.internal", "urllib3.connectionpool")


class LogScrubber(logging.Filter):
    """A filter on the HTTP libraries' loggers that scrubs each record's message before any handler (pytest's
    log capture, ``--log-file``, a service's log files) sees it."""

    def __init__(self, secrets: RunSecrets) -> None:
        super().__init__("llmsim-secrets")
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: left as it is
            return True
        scrubbed = self.secrets.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True

    def install(self) -> LogScrubber:
        for name in HTTP_LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def uninstall(self) -> None:
        for name in HTTP_LOGGERS:
            logging.getLogger(name).removeFilter(self)
