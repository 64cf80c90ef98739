"""Shared fixtures of the pytest-llmsim test suite.

``llm_server`` is the scripted OpenAI-compatible server on 127.0.0.1 (real HTTP); ``sim`` is a pytester
project wired to it: simple prompt templates, a scenario directory and a ``run`` helper for inner sessions.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

AGENT_REPLIES = [
    "Hello, Meat Market, how can I help?",
    "Two chicken fillets to Moscow, delivery in 1-2 days. Shall I confirm?",
    "Your order is confirmed. Goodbye! [END_CALL]",
]
CLIENT_REPLIES = [
    "Hi, I would like chicken fillet.",
    "Two packs, delivered to Moscow please.",
    "Yes, please confirm.",
]


def sigint_as_a_terminal_sends_it() -> None:
    """``preexec_fn`` for a pytest subprocess that a test interrupts with SIGINT: a shell's background job (and
    some CI runners) starts with SIGINT ignored, which children inherit; Python then installs no KeyboardInterrupt
    handler and the simulated Ctrl-C would do nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def verdict(score: int, comment: str) -> str:
    return json.dumps({"score": score, "comment": comment})


def default_script() -> dict[str, Any]:
    """Agent and client follow a fixed three-step order; the judge's score depends on the scenario name."""
    return {
        "rules": [
            {"match": {"system_contains": "EVALUATOR for low_"}, "reply": verdict(1, "The agent was rude.")},
            {"match": {"system_contains": "EVALUATOR for mid_"}, "reply": verdict(2, "Slow but correct.")},
            {"match": {"system_contains": "EVALUATOR"}, "reply": verdict(3, "Polite and complete.")},
            {"match": {"system_contains": "AGENT"}, "replies": AGENT_REPLIES},
            {"match": {"system_contains": "CLIENT"}, "replies": CLIENT_REPLIES},
        ]
    }


TEMPLATES = {
    "agent.j2": "AGENT for {{ scenario_name }}. Cities: {{ LOCATIONS }}. End with {{ end_marker }}.",
    "client.j2": "CLIENT for {{ scenario_name }}. Persona: {{ PERSONALITY }}.",
    "evaluator.j2": "EVALUATOR for {{ scenario_name }} in {{ language }}.\n{{ transcript_text }}",
}

BASE_VARIABLES = {"LOCATIONS": "Moscow, Kazan", "PERSONALITY": "calm"}


def scenario(name: str, **fields: Any) -> dict[str, Any]:
    variables = {**BASE_VARIABLES, **fields.pop("variables", {})}
    return {"name": name, "variables": variables, **fields}


@pytest.fixture(scope="session", autouse=True)
def _import_http_stack_once() -> None:
    """Exercise the HTTP stack (success, HTTP error, timeout, refused connection) once in this process.

    pytester's in-process runs restore ``sys.modules`` afterwards, dropping modules an inner run imported
    lazily; the next run would import fresh copies whose exception classes no longer match the ones the
    ``openai`` package already caught by identity. Importing everything up front keeps one copy.
    """
    import asyncio
    import contextlib
    import importlib

    import openai

    # numpy refuses a second import in one process ("cannot load module more than once"): an inner run that
    # imported it first (rouge, the histogram's matplotlib) would have it dropped, and the next import fail.
    for name in ("numpy", "matplotlib", "rouge_score.rouge_scorer", "genai_prices"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)

    script = {"rules": [{"match": {"model": "slow"}, "delay": 1.0, "reply": "late"},
                        {"match": {"model": "bad"}, "status": 500}, {"reply": "ok"}]}
    with ScriptedOpenAIServer(script) as server:
        async def exercise() -> None:
            for aiohttp_transport in (False, True):  # both transports the plugin can use
                for base_url, model in ((server.base_url, "ok"), (server.base_url, "bad"),
                                        (server.base_url, "slow"), ("http://127.0.0.1:9/v1", "ok")):
                    transport = {"http_client": openai.DefaultAioHttpClient()} if aiohttp_transport else {}
                    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", timeout=0.2, max_retries=0,
                                                **transport)
                    try:
                        await client.chat.completions.create(model=model,
                                                             messages=[{"role": "user", "content": "x"}])
                    except openai.APIError:
                        pass
                    await client.close()

        asyncio.run(exercise())


def write_bot(sim: SimProject, source: str, module: str = "bots") -> None:
    """A python agent for a scenario's ``agent: {python: "<module>.shop:<name>"}``: ``source`` as ``shop.py``."""
    package = sim.path / module
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "shop.py").write_text(textwrap.dedent(source))


LOCALMODEL_TESTS = Path(__file__).resolve().parent / "tests" / "localmodel"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Layer markers: every test under ``tests/localmodel/`` is ``localmodel``, and every ``localmodel`` test is
    ``slow`` (``pytest -m "not slow"`` is the quick subset; other slow tests carry ``@pytest.mark.slow``)."""
    for item in items:
        if LOCALMODEL_TESTS in item.path.parents:
            item.add_marker(pytest.mark.localmodel)
        if item.get_closest_marker("localmodel"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def llm_server() -> Iterator[ScriptedOpenAIServer]:
    server = ScriptedOpenAIServer(default_script())
    server.start()
    yield server
    server.stop()


class SimProject:
    """A pytester project for inner pytest sessions against the scripted server."""

    def __init__(self, pytester: pytest.Pytester, server: ScriptedOpenAIServer) -> None:
        self.pytester = pytester
        self.server = server
        self.path: Path = pytester.path
        (self.path / "prompts").mkdir()
        for name, text in TEMPLATES.items():
            (self.path / "prompts" / name).write_text(text, encoding="utf-8")
        (self.path / "scenarios").mkdir()
        self.ini_lines: dict[str, str] = {"llmsim_max_retries": "1", "llmsim_request_timeout": "5"}
        self.write_ini()

    def write_ini(self, **extra: str) -> None:
        self.ini_lines.update(extra)
        body = "\n".join(f"{k} = {v}" for k, v in self.ini_lines.items())
        self.pytester.makeini(f"[pytest]\n{body}\n")

    def write_scenarios(self, filename: str, data: Any) -> Path:
        path = self.path / "scenarios" / filename
        if filename.endswith(".json"):
            path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        else:
            import yaml

            path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    def run(self, *args: str, base_url: str | None = None, subprocess: bool = False) -> pytest.RunResult:
        url = base_url if base_url is not None else self.server.base_url
        full = ["-p", "no:randomly", f"--llmsim-base-url={url}", *args]
        if subprocess:
            return self.pytester.runpytest_subprocess(*full, timeout=300)
        return self.pytester.runpytest(*full)


@pytest.fixture
def sim(pytester: pytest.Pytester, llm_server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> SimProject:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
    return SimProject(pytester, llm_server)
