"""``--llmsim-shard=K/N``: keep shard K of the collected items, deselect the rest (as ``-k`` does: "N deselected").

The split itself is ``model.shards`` (by scenario, stable, balanced by recorded tokens). This plugin runs it last in
collection (after ``-k``/``-m`` and other plugins' reordering), remembers where each kept item stood in the whole
collection, and describes the shard for its export (``ShardPlugin.block``), which ``llmsim merge`` checks and
orders by (``reporting.merge``). Under xdist every worker collects and splits alike; the first worker's
description reaches the controller's export through ``workeroutput``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_llmsim.config.options import ResolvedOptions, verdict_settings
from pytest_llmsim.model.shards import Shard, assign, key_costs, shard_key, shard_loads

WORKER_OUTPUT = "llmsim_shard"


def collection_digest(nodeids: list[str]) -> str:
    """A digest of the collected node ids, in order: shards that collected the same suite share it."""
    digest = hashlib.sha256()
    for nodeid in nodeids:
        digest.update(nodeid.encode("utf-8") + b"\n")
    return digest.hexdigest()


def current_commit(rootdir: Path, env: dict[str, str] | None = None) -> str | None:
    """The commit under test: ``GITHUB_SHA`` (the same in every job of a workflow run), else ``git rev-parse HEAD``
    in ``rootdir``; None when neither is known."""
    env = dict(os.environ) if env is None else env
    if env.get("GITHUB_SHA"):
        return env["GITHUB_SHA"]
    try:
        out = subprocess.run(["git", "-C", str(rootdir), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


class ShardPlugin:
    """Deselects the items of the other shards and describes this one."""

    name = "llmsim-shard"

    def __init__(self, config: pytest.Config, resolved: ResolvedOptions) -> None:
        self.config = config
        self.resolved = resolved
        self.shard: Shard = resolved["llmsim_shard"]
        self.info: dict[str, Any] | None = None  # set at collection (in the process that collects)

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection and other plugins' reordering: the final order
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        nodeids = [item.nodeid for item in items]
        keys = [shard_key(nodeid) for nodeid in nodeids]
        unique = list(dict.fromkeys(keys))
        root: Path | None = self.resolved["llmsim_recordings"]
        recorded: dict[str, float] = {}
        if root is not None and root.is_dir():
            from pytest_llmsim.replay.recordings import recorded_tokens

            for key in unique:
                tokens = recorded_tokens(root, key)
                if tokens:
                    recorded[key] = float(tokens)
        costs, basis = key_costs(unique, recorded)
        placed = assign(unique, costs, self.shard.count)
        mine = self.shard.index - 1
        keep = [item for item, key in zip(items, keys, strict=True) if placed[key] == mine]
        drop = [item for item, key in zip(items, keys, strict=True) if placed[key] != mine]
        loads = shard_loads(placed, costs, self.shard.count)
        self.info = {
            "collected": len(items),
            "collection_digest": collection_digest(nodeids),
            "items": {item.nodeid: position for position, item in enumerate(items) if placed[keys[position]] == mine},
            "split": {"by": basis, "cost": round(loads[mine], 3), "total_cost": round(sum(loads), 3)},
        }
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_report_collectionfinish(self, config: pytest.Config) -> str | None:
        if self.info is None:
            return None
        kept = len(self.info["items"])
        split = self.info["split"]
        share = f"{split['cost'] / split['total_cost']:.0%}" if split["total_cost"] else "0%"
        return (f"llmsim: shard {self.shard}: {kept} of {self.info['collected']} items ({share} of the cost, split "
                f"by {split['by']})")

    @pytest.hookimpl(tryfirst=True)  # before the report plugin reads the exit status
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None and self.info is not None:
            workeroutput[WORKER_OUTPUT] = self.info
        if (self.info is not None and self.info["collected"] and not self.info["items"]
                and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED):
            # More shards than scenarios: this one's share is empty, which is no failure of the suite's.
            session.exitstatus = pytest.ExitCode.OK

    def block(self, info: dict[str, Any] | None, *, exit_status: int, extra_missed: list[str],
              rate_limits: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
        """The export's ``llmsim_shard`` object: what ``llmsim merge`` needs to check the shards belong together
        and to rebuild the single run (``reporting.merge``)."""
        info = info if info is not None else self.info or {}
        return {
            "index": self.shard.index,
            "count": self.shard.count,
            "commit": current_commit(self.config.rootpath),
            "settings": verdict_settings(self.resolved),
            "baseline": baseline,
            "collected": info.get("collected", 0),
            "collection_digest": info.get("collection_digest", ""),
            "split": info.get("split", {}),
            "exit_status": exit_status,
            "extra_missed": list(extra_missed),
            "rate_limits": rate_limits,
            "items": info.get("items", {}),
        }


def register_shards(config: pytest.Config, resolved: ResolvedOptions) -> None:
    if resolved["llmsim_shard"] is not None:
        config.pluginmanager.register(ShardPlugin(config, resolved), ShardPlugin.name)
