"""Hostile scenario and file names in a pytest-html report, loaded in a real (headless) Chromium.

pytest-html puts each test id into the row's Test cell as HTML and its page script inserts the row with
``innerHTML``; the plugin escapes that cell. Chromium's ``--dump-dom`` prints the DOM after the page's scripts
(and, with a virtual time budget, the image error handlers) ran: a payload that executed would have changed the
title.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SimProject, scenario

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    BROWSER is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium); CI installs it")]

# Scenario names may hold neither "/" nor "::"; file names no "/".
HOSTILE_NAME = """<img src=x onerror="document.title+='PWNED-NAME'">"""
HOSTILE_FILE = """<img src=x onerror="document.title+='PWNED-FILE'">.json"""
HOSTILE_ERROR = """<img src=x onerror="document.title+='PWNED-ERROR'">"""  # an invalid scenario: id ends ::setup


def _dump_dom(page: Path, profile: Path) -> str:
    assert BROWSER is not None
    completed = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0 and "</html>" in completed.stdout, completed.stderr[-2000:]
    return completed.stdout


def _title(dom: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", dom, re.S)
    assert match is not None, dom[:2000]
    return html.unescape(match.group(1))


def _test_id_cells(dom: str) -> list[str]:
    return [html.unescape(cell) for cell in re.findall(r'<td class="col-testId">(.*?)</td>', dom, re.S)]


def test_the_browser_runs_an_unescaped_payload(tmp_path: Path) -> None:
    """The control: in this mode Chromium does run an ``onerror`` handler inserted with ``innerHTML``."""
    page = tmp_path / "control.html"
    page.write_text("<html><head><title>control</title></head><body><div id=d></div><script>"
                    "document.getElementById('d').innerHTML = '<img src=x onerror=\"document.title+=\\'RAN\\'\">';"
                    "</script></body></html>", encoding="utf-8")
    assert _title(_dump_dom(page, tmp_path / "profile")) == "controlRAN"


def test_hostile_names_render_as_text_in_pytest_html(sim: SimProject, tmp_path: Path) -> None:
    pytest.importorskip("pytest_html")
    sim.write_scenarios("s.json", [scenario(HOSTILE_NAME), scenario("low_b"), scenario(HOSTILE_ERROR, min_score=7)])
    sim.write_scenarios(HOSTILE_FILE, [scenario("plain")])
    result = sim.run("--html=report.html")
    result.assert_outcomes(passed=2, failed=1, errors=1)
    dom = _dump_dom(sim.path / "report.html", tmp_path / "profile")
    title = _title(dom)
    assert "PWNED" not in title and title == "report.html"
    cells = _test_id_cells(dom)
    assert f"scenarios/s.json::{HOSTILE_NAME}" in cells  # shown as text, character for character
    assert f"scenarios/{HOSTILE_FILE}::plain" in cells
    assert f"scenarios/s.json::{HOSTILE_ERROR}::setup" in cells
    assert "scenarios/s.json::low_b" in cells
    assert not re.search(r"<img[^>]*onerror", dom)  # no element was created from a name
