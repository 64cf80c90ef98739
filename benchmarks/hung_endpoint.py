"""How fast a run fails against an endpoint that accepts connections and never answers, or drips its reply.

    python benchmarks/hung_endpoint.py
    python benchmarks/hung_endpoint.py --faults drip --suites sample -- -o llmsim_request_timeout=30

For each fault (``hang``: headers never come; ``drip``: 200 headers with ``Content-Length: 100000``, then one
byte a second) and each suite (``sample``: the repository's scenarios/ and prompts/, 8 scenarios; ``50``: 50
generated scenarios), runs pytest in a fresh directory with default settings except ``--llmsim-base-url`` (and
whatever follows ``--``) and prints wall seconds, pytest's last line and the requests the server received.
Targets (issue 12): the sample suite ends in under 60 s, 50 scenarios in under 90 s, with clear errors.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _harness import make_suite, print_machine_reference, run_pytest

from pytest_llmsim.testing.openai_server import ScriptedOpenAIServer

REPO = Path(__file__).resolve().parent.parent
FAULTS = {"hang": {"fault": "hang"}, "drip": {"fault": "drip", "drip_interval": 1.0, "drip_length": 100_000}}


def make_sample_suite(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copytree(REPO / "scenarios", root / "scenarios")
    shutil.copytree(REPO / "prompts", root / "prompts")
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def make_generated_suite(root: Path, scenarios: int) -> Path:
    make_suite(root, scenarios)
    (root / "pytest.ini").write_text("[pytest]\n")  # defaults: no retry or timeout overrides
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default="hang,drip", help="comma list of hang, drip")
    parser.add_argument("--suites", default="sample,50", help="comma list of sample and scenario counts")
    parser.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    print_machine_reference()
    print(f"{'fault':<6} {'suite':<7} {'wall s':>7} {'requests':>9}  pytest's last line")
    for fault in args.faults.split(","):
        for suite in args.suites.split(","):
            with tempfile.TemporaryDirectory() as tmp, ScriptedOpenAIServer({"rules": [FAULTS[fault]]}) as srv:
                root = Path(tmp) / "suite"
                if suite == "sample":
                    make_sample_suite(root)
                else:
                    make_generated_suite(root, int(suite))
                fig = run_pytest(root, f"--llmsim-base-url={srv.base_url}", "-rN", *args.extra)
                last = fig.tail.splitlines()[-1] if fig.tail else ""
                print(f"{fault:<6} {suite:<7} {fig.wall_s:7.1f} {srv.stats()['requests']:9d}  {last}", flush=True)


if __name__ == "__main__":
    main()
