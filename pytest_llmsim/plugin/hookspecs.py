"""The hooks pytest-llmsim adds: implement them in a conftest.py or a plugin."""

from __future__ import annotations

from typing import Any


def pytest_llmsim_metrics() -> Any:
    """Metrics to make available to ``evaluate:``: a mapping of name to a ``pytest_llmsim.Metric`` subclass (or
    a factory taking the options mapping), or a list of ``Metric`` subclasses (registered under their ``name``).
    Every implementation's result is used; a later name replaces an earlier one, built-in names included."""
