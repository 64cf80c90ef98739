"""The package's architecture, checked: which packages may import pytest, one source of error kinds, no module
importing upward into the pytest front, and the option reference generated from the option table."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_llmsim
from pytest_llmsim import errors
from pytest_llmsim.errors import ErrorKind, LlmsimError

pytestmark = pytest.mark.slow

PACKAGE = Path(pytest_llmsim.__file__).resolve().parent
FRONT = "plugin"  # the only package that may import pytest
PYTEST_FREE = ("engine", "metrics", "config", "llm", "agents", "replay", "reporting", "history", "apps")


def _modules(package: str) -> list[str]:
    root = PACKAGE / package
    return sorted(_module_name(p) for p in root.rglob("*.py"))


def _module_name(path: Path) -> str:
    return ("pytest_llmsim." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def _imports(path: Path, *, type_checking: bool = True) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included); ``type_checking=False``
    leaves out those under ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", PYTEST_FREE)
def test_no_package_but_the_pytest_front_imports_pytest_even_lazily(package: str) -> None:
    for path in (PACKAGE / package).rglob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("pytest", "_pytest", "xdist", "pytest_html")}
        front = {m for m in _imports(path) if m.startswith(f"pytest_llmsim.{FRONT}")}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"
        assert not front, f"{path.relative_to(PACKAGE)} imports the pytest front: {sorted(front)}"


def test_the_cli_and_the_service_import_and_start_with_pytest_unimportable() -> None:
    """``llmsim`` and ``llmsim serve`` are fronts of their own: every module they load comes without pytest."""
    script = (
        "import sys\n"
        "sys.modules['pytest'] = None\n"
        "sys.modules['_pytest'] = None\n"
        + "".join(f"import {name}\n" for name in [*_modules("apps"), *_modules("engine"), *_modules("reporting")])
        + "from pytest_llmsim.apps.cli import build_parser\n"
        "build_parser().parse_args(['run', 'x.yaml'])\n"
        "assert not [m for m, v in sys.modules.items() if v is not None and m.startswith(('_pytest', 'xdist'))]\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_every_error_kind_comes_from_the_one_enum() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, LlmsimError)]
    assert [c for c in classes if not isinstance(c.kind, ErrorKind)] == []
    # every error class of the package lives in errors.py
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not bases & {c.__name__ for c in classes}, f"{path.relative_to(PACKAGE)}: {node.name}"
    # no kind label written as a raw string outside errors.py (the reports read them back through the enum)
    labels = "|".join(re.escape(k.value) for k in ErrorKind if k is not ErrorKind.ERROR)
    raw = re.compile(rf"""["']({labels})["']""")
    for path in PACKAGE.rglob("*.py"):
        if path.name != "errors.py":
            assert not raw.search(path.read_text(encoding="utf-8")), f"{path.relative_to(PACKAGE)}"


def test_the_fronts_sit_on_top_and_no_module_imports_in_a_circle() -> None:
    """Nothing below imports a front (``apps``, ``plugin``), ``apps`` never imports the pytest front, and the
    modules' run-time imports (function-level ones included) form no circle: each folder can be read on its own."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] = {m for m in _imports(path, type_checking=False) if m.startswith("pytest_llmsim.") and m != name}
        package = name.split(".")[1] if name.count(".") > 1 else ""
        fronts = {"apps", "plugin"} if package not in ("apps", "plugin") else {"plugin"} if package == "apps" else set()
        above = {m for m in graph[name] if m.split(".")[1] in fronts}
        assert not above, f"{name} imports a front: {sorted(above)}"
    graph = {name: {m for m in deps if m in graph} for name, deps in graph.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(graph[node]):
            if dep == "pytest_llmsim":
                continue
            assert seen.get(dep) != 1, "import circle: " + " -> ".join([*path, node, dep])
            if dep not in seen:
                visit(dep, [*path, node])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [])


def test_the_configuration_reference_is_generated_from_the_option_table() -> None:
    from pytest_llmsim.config.options import markdown_table

    reference = (PACKAGE.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert markdown_table() in reference


def test_the_packages_import_each_other_in_one_direction() -> None:
    """Between packages, imports (annotations included) run one way: the folders stack as layers, none reaching
    back into a folder that reaches into it."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        own = parts[0].removesuffix(".py")
        for module in _imports(path):
            if module.startswith("pytest_llmsim.") and module.split(".")[1] != own:
                edges.setdefault(own, set()).add(module.split(".")[1])
    both_ways = sorted((a, b) for a, targets in edges.items() for b in targets if a in edges.get(b, set()))
    assert both_ways == []


def test_no_module_above_500_lines_without_a_reason_in_its_docstring() -> None:
    """A module past 500 lines says in its docstring why it is one unit (``Why one module: ...``), or is split."""
    unexplained = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 500 and "Why one module:" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(str(path.relative_to(PACKAGE)))
    assert unexplained == []


def test_no_two_test_files_share_a_name() -> None:
    """The test folders are not packages (rootdir-relative imports): two ``test_x.py`` in different folders stop
    the whole run with "import file mismatch", so a new test file needs a name of its own."""
    tests = Path(__file__).resolve().parent.parent
    names: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
