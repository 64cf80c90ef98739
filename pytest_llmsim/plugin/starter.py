"""``pytest --llmsim-init``: a minimal working project, written without overwriting anything.

It writes a scenario file that uses only ``persona``/``goal``/``criteria`` (no templates: the package's generic
customer and judge prompts serve it), a small rule-based Python agent to test, and a ``pytest.ini`` with the
settings the example relies on. The ini file also makes the folder pytest's rootdir, so ``support_agent`` is
importable and ``scenarios`` is found even when a parent folder holds other pytest settings. When the folder
already holds pytest settings (``pytest.ini``, ``pyproject.toml``, ``tox.ini``, ``setup.cfg``...), a new
``pytest.ini`` would shadow them, so none is written: the lines to add there are printed instead. Right after
it, ``pytest`` runs the example (on the local model when no endpoint is configured).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

SCENARIO_FILE = """\
# pytest-llmsim scenarios: each scenario below is one pytest item (pytest -v shows their ids).
# The customer is simulated from `persona` and `goal`; the judge scores the agent 1-3 against `criteria`.
defaults:
  agent: {python: "support_agent:reply"}   # the agent under test: function reply() in support_agent.py
  max_turns: 8                             # messages from both sides before the call is cut
  min_score: 2                             # the item fails below this score

scenarios:
  - name: late_parcel_refund
    persona: a polite customer whose parcel is a week late
    goal: get a refund for the late parcel (order number 1042)
    criteria:
      - asks for the order number, or uses the one the customer gave
      - offers a refund or a voucher
      - does not promise a delivery date it cannot keep

  - name: change_delivery_address
    persona: a busy customer who has moved house
    goal: change the delivery address of order 2077 to 12 Elm Street
    criteria:
      - confirms the new address back to the customer
      - says when the change takes effect
"""

AGENT_FILE = '''\
"""The agent under test: a small rule-based support bot (replace it with yours).

pytest-llmsim calls ``reply(messages, context)`` once per agent turn. ``messages`` is the conversation so far
as OpenAI-style messages from the agent's point of view (the customer's lines are "user" messages); ``context``
has the scenario's name, variables and seed. Return the reply text, or a dict with "content", optional
"tool_calls" ([{"name", "arguments", "result"}]) and "end": True to end the call.
"""

import re


def reply(messages, context):
    said = " ".join(m["content"] or "" for m in messages if m["role"] == "user").lower()
    if not said:
        return "Hello, this is Parcel Support. How can I help you today?"
    order = re.search(r"\\b(\\d{3,})\\b", said)
    if not order:
        return "I am sorry to hear that. Could you give me your order number, please?"
    if "address" in said or "moved" in said or "street" in said:
        return {
            "content": f"I have changed the delivery address of order {order.group(1)}. "
                       "The change applies to the next delivery attempt, tomorrow. Anything else?",
            "tool_calls": [{"name": "change_address", "arguments": {"order": order.group(1)},
                            "result": {"ok": True}}],
        }
    if any(word in said for word in ("bye", "thank")):
        return {"content": "You are welcome. Goodbye!", "end": True}
    return {
        "content": f"I have issued a full refund for order {order.group(1)}; it reaches your account in "
                   "3-5 business days. Is there anything else I can do?",
        "tool_calls": [{"name": "issue_refund", "arguments": {"order": order.group(1)}, "result": {"ok": True}}],
    }
'''


# The ini settings the example relies on: (comment, key, values). ``pytest.ini`` gets them with their comments; a
# project whose pytest settings live elsewhere is shown them in that file's syntax.
SETTINGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Folders of scenario files: each scenario in them is one test item.", "llmsim_paths", ("scenarios",)),
)

INI_HEADER = """\
# pytest's settings for this project (written by pytest --llmsim-init). pytest-llmsim reads its llmsim_* keys
# here; the README's configuration table lists them all. This file also makes this folder pytest's rootdir,
# the folder support_agent.py is imported from.
[pytest]
"""

INI_HINTS = """\
# The agent under test for every scenario that names none (scenarios/example.yaml names its own):
# llmsim_agent = {python: "support_agent:reply"}
# The endpoint that plays the customer and the judge (empty: OpenAI when OPENAI_API_KEY is set, else the
# bundled local model):
# llmsim_base_url = http://127.0.0.1:8000/v1
"""


def setting_lines(*, toml: bool) -> list[str]:
    """The ``SETTINGS`` as lines of an ini file (``key = a``) or of a TOML table (``key = ["a"]``)."""
    if toml:  # a JSON list of strings is a TOML array
        return [f"{key} = {json.dumps(list(values))}" for _, key, values in SETTINGS]
    return [f"{key} = {' '.join(values)}" for _, key, values in SETTINGS]


PYTEST_INI = INI_HEADER + "".join(f"# {comment}\n{line}\n" for (comment, _, _), line in
                                  zip(SETTINGS, setting_lines(toml=False), strict=True)) + INI_HINTS


@dataclass(frozen=True)
class StarterFile:
    path: str
    text: str


FILES = (StarterFile("scenarios/example.yaml", SCENARIO_FILE), StarterFile("support_agent.py", AGENT_FILE),
         StarterFile("pytest.ini", PYTEST_INI))


@dataclass(frozen=True)
class PytestConfig:
    """A file that already holds the project's pytest settings, and the table or section they sit in."""

    path: Path
    section: str
    toml: bool


# The files pytest reads its settings from, in the order it looks at them in one folder.
CONFIG_NAMES = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


def existing_pytest_config(root: Path) -> PytestConfig | None:
    """The file in ``root`` that pytest takes its settings from, if one holds any (a ``pyproject.toml`` without a
    ``[tool.pytest...]`` table, a ``tox.ini`` without ``[pytest]`` do not); a new ``pytest.ini`` would shadow it."""
    for name in CONFIG_NAMES:
        path = root / name
        if not path.is_file():
            continue
        if name in ("pytest.toml", ".pytest.toml"):
            return PytestConfig(path, "[pytest]", toml=True)
        if name in ("pytest.ini", ".pytest.ini"):  # pytest takes these even when they are empty
            return PytestConfig(path, "[pytest]", toml=False)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:  # unreadable: pytest cannot read it either; leave it alone and do not shadow it
            return PytestConfig(path, "[tool.pytest.ini_options]" if name == "pyproject.toml" else
                                "[tool:pytest]" if name == "setup.cfg" else "[pytest]", toml=name == "pyproject.toml")
        if name == "pyproject.toml":
            try:
                tool = tomllib.loads(text).get("tool")
            except tomllib.TOMLDecodeError:  # pytest stops at it too: leave the project's files alone
                return PytestConfig(path, "[tool.pytest.ini_options]", toml=True)
            table = tool.get("pytest") if isinstance(tool, dict) else None
            if isinstance(table, dict):
                return PytestConfig(path, "[tool.pytest.ini_options]" if "ini_options" in table or not table
                                    else "[tool.pytest]", toml=True)
            continue
        section = "[tool:pytest]" if name == "setup.cfg" else "[pytest]"
        if re.search(rf"^{re.escape(section)}[ \t]*$", text, re.MULTILINE):
            return PytestConfig(path, section, toml=False)
    return None


class StarterError(Exception):
    """The starter cannot be written: ``problems`` holds one line per target (its path and what to do). Nothing
    was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


AGAIN = "then run pytest --llmsim-init again"


def _link_problem(path: Path, root: Path) -> str | None:
    """A line for ``path`` when it is a symbolic link to nothing (``exists()`` is False, yet nothing can be created
    there), None otherwise."""
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        return (f"{_shown(path, root)} is a symbolic link to {target}, which does not exist: remove the link or "
                f"create {target}, {AGAIN}")
    return None


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _probe(folder: Path) -> OSError | None:
    """Whether a file can be created in ``folder``, by creating one and removing it (file modes do not tell for
    root, nor for a read-only mount)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".llmsim-init-", dir=folder)
    except OSError as exc:
        return exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def plan_starter(root: Path) -> tuple[list[StarterFile], list[Path], list[str]]:
    """What ``write_starter`` would do, checked without writing: (files to write, targets kept because they exist,
    problems, one line each)."""
    to_write: list[StarterFile] = []
    skipped: list[Path] = []
    problems: list[str] = []
    has_config = existing_pytest_config(root) is not None
    probed: set[Path] = set()
    for item in FILES:
        target = root / item.path
        if item.path == "pytest.ini" and has_config:
            continue
        problem = None
        folder = root
        for part in Path(item.path).parts[:-1]:  # each folder on the way: a folder, or nothing yet
            folder = folder / part
            problem = _link_problem(folder, root)
            if problem is None and folder.exists() and not folder.is_dir():
                problem = (f"{_shown(folder, root)} is a file, and the example needs a folder of that name for "
                           f"{item.path}: rename or remove the file, {AGAIN}")
            if problem is not None or not folder.exists():
                break
        problem = problem or _link_problem(target, root)
        if problem is None and target.exists():
            skipped.append(target)
            continue
        if problem is None:  # the nearest existing folder must take a new file
            existing = target.parent
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if existing not in probed:
                probed.add(existing)
                refused = _probe(existing)
                if refused is not None:
                    problem = (f"the folder {existing} is not writable ([Errno {refused.errno}] {refused.strerror}): "
                               "make it writable or run pytest "
                               "--llmsim-init in a folder you can write to")
        if problem is not None:
            if problem not in problems:
                problems.append(problem)
            continue
        to_write.append(item)
    return to_write, skipped, problems


def write_starter(root: Path) -> tuple[list[Path], list[Path]]:
    """Write the starter files under ``root``; return (written, skipped because they exist). Never overwrites;
    no ``pytest.ini`` when the project's pytest settings live in another file (``starter_lines`` shows them).
    All or nothing: every target is checked first (``StarterError`` with one line per problem), and a write that
    fails anyway removes what was written before it."""
    to_write, skipped, problems = plan_starter(root)
    if problems:
        raise StarterError(problems)
    written: list[Path] = []
    created: list[Path] = []
    try:
        for item in to_write:
            target = root / item.path
            missing = [parent for parent in target.relative_to(root).parents if not (root / parent).exists()]
            for parent in reversed(missing):
                (root / parent).mkdir()
                created.append(root / parent)
            with open(target, "x", encoding="utf-8") as handle:  # "x": never replace a file that appeared meanwhile
                written.append(target)
                handle.write(item.text)
    except OSError as exc:
        for path in reversed(written):
            with contextlib.suppress(OSError):
                path.unlink()
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise StarterError([f"{_shown(Path(exc.filename), root) if exc.filename else root}: {exc}: {AGAIN} "
                            "once that is fixed"]) from None
    return written, skipped


def starter_lines(root: Path, written: list[Path], skipped: list[Path]) -> list[str]:
    """What ``--llmsim-init`` prints: what it wrote, what it left alone, the settings to add to a project's own
    pytest settings when it did not write ``pytest.ini``, and the next command."""
    lines = [f"llmsim: wrote {path.relative_to(root)}" for path in written]
    lines += [f"llmsim: kept {path.relative_to(root)} (it exists; nothing was overwritten)" for path in skipped]
    config = None if root / "pytest.ini" in written else existing_pytest_config(root)
    if config is not None:
        def bare(line: str) -> str:
            return re.sub(r"\s", "", line).replace("'", '"')

        try:
            present = {bare(line) for line in config.path.read_text(encoding="utf-8", errors="replace").splitlines()}
        except OSError:
            present = set()
        missing = [line for line in setting_lines(toml=config.toml) if bare(line) not in present]
        lines.append(f"llmsim: kept {config.path.relative_to(root)} (it holds this project's pytest settings; nothing "
                     "was overwritten)")
        if missing:
            lines += [f"Add these lines under {config.section} in {config.path.name} for the example",
                      "(where a key is already set there, add the value to it):", "",
                      *(f"    {line}" for line in missing)]
    lines += [
        "",
        "Next: run the example scenarios (the bundled local model plays the customer and the judge when no",
        "endpoint is configured; set OPENAI_API_KEY or --llmsim-base-url for a real model):",
        "",
        "    pytest -v",
        "",
        "Then point `agent:` in scenarios/example.yaml at your own agent (python, http or openai; see the README).",
    ]
    return lines
