"""The cache is untrusted data: no pickle, corrupt and read-only caches, clear one-line errors.

Everything runs against real directories: a planted pickle row, garbage and truncated ``cache.db`` files,
a cache path that is a file, a read-only bind mount, an immutable (``chattr +i``) directory and a directory
that the ``nobody`` user cannot write.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import diskcache
import pytest

import pytest_llmsim
from conftest import SimProject, scenario
from pytest_llmsim.errors import CacheError
from pytest_llmsim.model.settings import RecordMode
from pytest_llmsim.replay.cache import CACHE_FORMAT_VERSION, CallCache, JsonDisk

NOBODY = 65534
RESPONSE = {"text": "hi", "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.1, "model": "m"}


class Exploit:
    """Pickles to ``os.system("touch <marker>")``: what a crafted row in a committed cache would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _record(sim: SimProject, *names: str) -> Path:
    sim.write_ini(llmsim_recordings="off")  # these tests are about the disk cache alone
    sim.write_scenarios("s.json", [scenario(name) for name in names])
    low = sum(name.startswith("low_") for name in names)  # the scripted judge fails these
    sim.run().assert_outcomes(passed=len(names) - low, failed=low)
    return sim.path / ".llmsim_cache"


def _keys(cache_dir: Path) -> list[str]:
    with sqlite3.connect(cache_dir / "cache.db") as con:
        return [row[0] for row in con.execute("SELECT key FROM Cache ORDER BY rowid")]


def _one_line_error(directory: Path, make: Callable[[], object], *hints: str) -> str:
    with pytest.raises(CacheError) as info:
        make()
    message = str(info.value)
    assert "\n" not in message
    assert str(directory) in message
    assert "Traceback" not in message
    for hint in hints:
        assert hint in message, message
    return message


# --- no pickle ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_planted_pickle_row_never_runs(sim: SimProject, tmp_path: Path) -> None:
    cache_dir = _record(sim, "a")
    marker = tmp_path / "pwned"
    planted = diskcache.Cache(str(cache_dir))  # plain diskcache: pickles values
    for key in _keys(cache_dir):
        planted.set(key, Exploit(marker))
    planted.close()
    requests = sim.server.stats()["requests"]

    replay = sim.run("--llmsim-record=none")
    replay.assert_outcomes(errors=1)
    replay.stdout.fnmatch_lines([f"*corrupt or foreign entry * in the llmsim cache {cache_dir} *pickle*"
                                 f"re-record with --llmsim-record=once*"])
    assert not marker.exists()
    assert sim.server.stats()["requests"] == requests

    sim.run("--llmsim-record=once").assert_outcomes(passed=1)  # re-recorded over the planted rows
    assert not marker.exists()
    assert sim.server.stats()["requests"] > requests
    requests = sim.server.stats()["requests"]
    sim.run("--llmsim-record=none").assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == requests
    assert not marker.exists()


def test_values_are_stored_as_json_and_keys_as_text(tmp_path: Path) -> None:
    cache = CallCache(tmp_path, RecordMode.ONCE)
    cache.store("k", {"model": "m"}, RESPONSE, "s.json::a agent turn 1")
    cache.close()
    with sqlite3.connect(tmp_path / "cache.db") as con:
        ((key, raw, mode, value),) = con.execute("SELECT key, raw, mode, value FROM Cache").fetchall()
    assert (key, raw, mode) == ("k", 1, diskcache.core.MODE_RAW)
    assert zlib.decompress(value).decode("utf-8").startswith(f'{{"v":{CACHE_FORMAT_VERSION},')
    with pytest.raises(TypeError):
        CallCache(tmp_path, RecordMode.ONCE).store(("tuple", "key"), {}, RESPONSE, "x")  # type: ignore[arg-type]


def test_a_malformed_entry_is_re_recorded_in_once_and_reported_in_none(tmp_path: Path) -> None:
    """JSON that is not an llmsim entry of this format: old version, wrong kind, wrong field types."""
    bad_entries = {
        "old": {"v": 1, "kind": "call", "request": {}, "response": RESPONSE, "label": "x"},
        "bare": {"request": {}, "response": RESPONSE, "label": "x"},
        "list": [1, 2],
        "text_tokens": {"v": CACHE_FORMAT_VERSION, "kind": "call", "request": {}, "label": "x",
                        "response": {**RESPONSE, "prompt_tokens": "many"}},
        "no_text": {"v": CACHE_FORMAT_VERSION, "kind": "call", "request": {}, "label": "x",
                    "response": {k: v for k, v in RESPONSE.items() if k != "text"}},
        "marker": {"v": CACHE_FORMAT_VERSION, "kind": "marker", "marker": {"turns": -1}},
    }
    raw = diskcache.Cache(str(tmp_path), disk=JsonDisk)
    for key, entry in bad_entries.items():
        raw.set(key, entry)
    raw.close()

    replay = CallCache(tmp_path, RecordMode.NONE)
    for key in bad_entries:
        lookup = replay.lookup_marker if key == "marker" else replay.lookup
        message = _one_line_error(tmp_path, lambda k=key, f=lookup: f(k, label="s.json::a agent turn 1"),
                                  "s.json::a agent turn 1", "corrupt or foreign entry", "--llmsim-record=once")
        assert key[:12] in message
    assert replay.closest({"model": "m"}, "x") is None  # skipped, not loaded
    assert replay.foreign_seen == len(bad_entries) - 1  # the marker is not a call, not foreign
    replay.close()

    record = CallCache(tmp_path, RecordMode.ONCE)
    assert all(record.lookup(key) is None for key in bad_entries if key != "marker")
    assert record.lookup_marker("marker") is None
    assert record.corrupt == len(bad_entries)
    for key in bad_entries:
        record.store(key, {"model": "m"}, RESPONSE, "x")
    assert all(record.lookup(key) == RESPONSE for key in bad_entries)
    record.close()


def test_a_row_pointing_at_a_file_outside_the_cache_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.val"
    secret.write_bytes(zlib.compress(b'{"v": 2}'))
    cache_dir = tmp_path / "cache"
    cache = CallCache(cache_dir, RecordMode.ONCE)
    cache.store("k", {"model": "m"}, RESPONSE, "x")
    cache.close()
    with sqlite3.connect(cache_dir / "cache.db") as con:
        con.execute("UPDATE Cache SET mode = ?, filename = '../secret.val', value = NULL WHERE key = 'k'",
                    (diskcache.core.MODE_BINARY,))
    _one_line_error(cache_dir, lambda: CallCache(cache_dir, RecordMode.NONE).lookup("k"),
                    "outside the cache directory")


@pytest.mark.slow
def test_a_damaged_row_is_re_recorded_in_once_and_reported_in_none(sim: SimProject) -> None:
    cache_dir = _record(sim, "a")
    first_key = _keys(cache_dir)[0]
    with sqlite3.connect(cache_dir / "cache.db") as con:
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"\x78\x01garbage", first_key))
    requests = sim.server.stats()["requests"]

    replay = sim.run("--llmsim-record=none")
    replay.assert_outcomes(errors=1)
    replay.stdout.fnmatch_lines([f"*corrupt or foreign entry {first_key[:12]} in the llmsim cache {cache_dir}*"])
    assert sim.server.stats()["requests"] == requests

    sim.run("--llmsim-record=once").assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == requests + 1  # only the damaged call is made again
    sim.run("--llmsim-record=none").assert_outcomes(passed=1)
    assert sim.server.stats()["requests"] == requests + 1


# --- caches that cannot be used: one line naming the directory and what to do ----------------------------


def test_cache_path_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.write_text("not a directory")
    _one_line_error(path, lambda: CallCache(path, RecordMode.ONCE), "is a file", "--llmsim-cache-dir")
    _one_line_error(path, lambda: CallCache(path, RecordMode.NONE), "is a file")


def test_cache_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "cache"
    _one_line_error(path, lambda: CallCache(path, RecordMode.ONCE), "cannot be created", "--llmsim-cache-dir")


def test_garbage_cache_db(tmp_path: Path) -> None:
    (tmp_path / "cache.db").write_bytes(b"this is not a database\n" * 200)
    for mode in RecordMode:
        _one_line_error(tmp_path, lambda m=mode: CallCache(tmp_path, m), "not an SQLite database",
                        "--llmsim-record=once")


def test_truncated_recorded_cache_db(sim: SimProject) -> None:
    cache_dir = _record(sim, "a", "b")
    db = cache_dir / "cache.db"
    assert not (cache_dir / "cache.db-wal").exists()  # closed cleanly: everything is in cache.db
    os.truncate(db, db.stat().st_size // 2)
    for mode in RecordMode:
        _one_line_error(cache_dir, lambda m=mode: CallCache(cache_dir, m), "truncated", "--llmsim-record=once")
    os.truncate(db, 60)  # not even an SQLite header left
    _one_line_error(cache_dir, lambda: CallCache(cache_dir, RecordMode.NONE), "not an SQLite database")


def test_a_settings_row_diskcache_would_run_as_a_pragma(tmp_path: Path) -> None:
    diskcache.Cache(str(tmp_path), disk=JsonDisk).close()
    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute("UPDATE Settings SET value = ? WHERE key = 'sqlite_cache_size'", ("1; DROP TABLE Cache",))
    _one_line_error(tmp_path, lambda: CallCache(tmp_path, RecordMode.NONE), "invalid setting")
    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute("UPDATE Settings SET value = 8192 WHERE key = 'sqlite_cache_size'")
        con.execute("INSERT INTO Settings VALUES ('close', 1)")
    _one_line_error(tmp_path, lambda: CallCache(tmp_path, RecordMode.ONCE), "unknown setting 'close'")


# needs the plugin wiring (the session turns a CacheError from opening the cache into a one-line usage error)
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["file", "garbage", "truncated"])
@pytest.mark.parametrize("mode", ["once", "none"])
def test_unusable_cache_is_one_line_not_internalerror(sim: SimProject, damage: str, mode: str) -> None:
    cache_dir = _record(sim, "a", "b")
    db = cache_dir / "cache.db"
    if damage == "file":
        shutil.rmtree(cache_dir)
        cache_dir.write_text("oops")
    elif damage == "garbage":
        db.write_bytes(b"garbage\n" * 1000)
    else:
        os.truncate(db, db.stat().st_size // 2)
    result = sim.run(f"--llmsim-record={mode}")
    output = result.stdout.lines + result.stderr.lines
    assert not any("INTERNALERROR" in line or "Traceback" in line for line in output), "\n".join(output)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in output if f"llmsim cache {cache_dir}" in line or
            f"llmsim cache directory {cache_dir}" in line]


# --- read-only caches replay -------------------------------------------------------------------------------


@contextlib.contextmanager
def _read_only_bind_mount(path: Path) -> Iterator[None]:
    try:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot bind-mount (needs root with CAP_SYS_ADMIN): {exc}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True, capture_output=True)
        yield
    finally:
        gc.collect()  # close SQLite connections a failed inner run may have left open
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(path)], check=True, capture_output=True)


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    targets = [str(p) for p in sorted(path.iterdir())] + [str(path)]
    try:
        subprocess.run(["chattr", "+i", *targets], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot set the immutable attribute (needs CAP_LINUX_IMMUTABLE and ext4/xfs/btrfs): {exc}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *targets], check=True, capture_output=True)


ReadOnlyMaker = Callable[[Path], contextlib.AbstractContextManager[None]]


def _tree_digest(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("make_read_only", [_read_only_bind_mount, _immutable], ids=["ro-mount", "chattr+i"])
def test_replay_from_a_read_only_cache(sim: SimProject, make_read_only: ReadOnlyMaker) -> None:
    cache_dir = _record(sim, "a", "low_b")
    requests = sim.server.stats()["requests"]
    before = _tree_digest(cache_dir)
    with make_read_only(cache_dir):
        probe = cache_dir / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")  # really read-only, even for root
        sim.write_scenarios("s.json", [scenario("a"), scenario("low_b")])
        sim.run("--llmsim-record=none").assert_outcomes(passed=1, failed=1)
        assert sim.server.stats()["requests"] == requests

        cache = CallCache(cache_dir, RecordMode.ONCE)
        assert cache.read_only and len(cache) > 0
        cache.close()

        # once: a miss still gets its reply (the item passes), it just cannot be kept
        sim.write_scenarios("s.json", [scenario("a"), scenario("low_b"), scenario("c")])
        sim.run("--llmsim-record=once").assert_outcomes(passed=2, failed=1)
        assert sim.server.stats()["requests"] > requests
    assert _tree_digest(cache_dir) == before


@pytest.mark.parametrize("keep_shm", [True, False], ids=["wal+shm", "wal-only"])
def test_read_only_copy_with_an_unmerged_write_ahead_log(tmp_path: Path, keep_shm: bool) -> None:
    """A cache copied (or committed) while a writer was open keeps part of its rows in cache.db-wal."""
    writer = CallCache(tmp_path / "live", RecordMode.ONCE)
    for i in range(40):
        writer.store(f"k{i}", {"model": "m"}, RESPONSE, "x")
    shutil.copytree(tmp_path / "live", tmp_path / "copy")  # while the writer is still open
    writer.close()
    copy = tmp_path / "copy"
    assert (copy / "cache.db-wal").stat().st_size > 0
    if not keep_shm:
        (copy / "cache.db-shm").unlink()
    with _read_only_bind_mount(copy):
        cache = CallCache(copy, RecordMode.NONE)
        assert cache.read_only
        assert len(cache) == 40
        assert all(cache.lookup(f"k{i}") == RESPONSE for i in range(40))
        assert cache.closest({"model": "m"}, "x") == ("x", [])
        cache.close()


_NOBODY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from pytest_llmsim.replay.cache import CallCache
    from pytest_llmsim.model.settings import RecordMode
    out = {}
    for mode in (RecordMode.NONE, RecordMode.ONCE):
        cache = CallCache(Path(sys.argv[1]), mode)
        keys = json.loads(sys.argv[2])
        hits = sum(cache.lookup(k) is not None for k in keys)
        cache.store("new", {"model": "m"}, {"text": "t", "prompt_tokens": 1, "completion_tokens": 1,
                                             "latency_s": 0.1, "model": "m"}, "x")
        out[mode.value] = [cache.read_only, len(cache), hits, cache.unstored, cache.lookup("new")]
        cache.close()
    print(json.dumps(out))
    """
)


@contextlib.contextmanager
def _world_readable_copy(source: Path) -> Iterator[Path]:
    """``source`` copied under a fresh directory in /tmp that ``nobody`` can read but not write."""
    if os.geteuid() != 0:
        pytest.skip("switching to the nobody user needs root")
    parent = Path(tempfile.mkdtemp(prefix="llmsim-nobody-"))
    try:
        copy = parent / source.name
        shutil.copytree(source, copy)
        for path in [parent, *copy.rglob("*"), copy]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield copy
    finally:
        shutil.rmtree(parent)


def _nobody_python() -> tuple[str, dict[str, str]]:
    """An interpreter the nobody user can run with this environment's packages, and its extra environment.

    The virtualenv's interpreter may live under root's home (0700); then a system Python of the same minor
    version gets the virtualenv's site-packages and the project on PYTHONPATH."""
    candidates = [(sys.executable, {})]
    paths = os.pathsep.join([sysconfig.get_paths()["purelib"], str(Path(pytest_llmsim.__file__).parents[1])])
    for directory in ("/usr/bin", "/usr/local/bin"):
        system = Path(directory) / f"python{sys.version_info.major}.{sys.version_info.minor}"
        if system.exists():
            candidates.append((str(system), {"PYTHONPATH": paths}))
    for executable, extra in candidates:
        try:
            probe = subprocess.run([executable, "-c", "import pytest, pytest_llmsim.replay.cache, diskcache"],
                                   env={**os.environ, **extra}, user=NOBODY, group=NOBODY, extra_groups=[],
                                   capture_output=True, timeout=60)
        except OSError:
            continue
        if probe.returncode == 0:
            return executable, extra
    pytest.skip("no Python interpreter with this environment's packages is usable by the nobody user")


def _as_nobody(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    executable, extra = _nobody_python()
    env = {**os.environ, **extra, "HOME": str(cwd)}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([executable, *args], cwd=cwd, env=env, user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True, timeout=300)


def test_cache_unwritable_by_permissions_opens_read_only(tmp_path: Path) -> None:
    source = tmp_path / "cache"
    cache = CallCache(source, RecordMode.ONCE)
    keys = [f"k{i}" for i in range(20)]
    for key in keys:
        cache.store(key, {"model": "m"}, RESPONSE, "x")
    cache.close()
    with _world_readable_copy(source) as copy:
        done = _as_nobody(["-c", _NOBODY_SCRIPT, str(copy), json.dumps(keys)], copy)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"none": [True, 20, 20, 1, None], "once": [True, 20, 20, 1, None]}


@pytest.mark.slow
def test_replay_as_a_user_who_cannot_write_the_project(sim: SimProject) -> None:
    _record(sim, "a", "low_b")
    requests = sim.server.stats()["requests"]
    with _world_readable_copy(sim.path) as project:
        base = ["-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
                f"--llmsim-base-url={sim.server.base_url}", "-q"]
        done = _as_nobody([*base, "--llmsim-record=none"], project)
        assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
        assert "INTERNALERROR" not in done.stdout + done.stderr
        assert sim.server.stats()["requests"] == requests
        before = _tree_digest(project / ".llmsim_cache")
        sim.write_scenarios("s.json", [scenario("a"), scenario("low_b"), scenario("c")])
        shutil.copy(sim.path / "scenarios" / "s.json", project / "scenarios" / "s.json")
        done = _as_nobody([*base, "--llmsim-record=once"], project)
        assert "1 failed, 2 passed" in done.stdout, done.stdout + done.stderr
        assert sim.server.stats()["requests"] > requests
        assert _tree_digest(project / ".llmsim_cache") == before


def test_a_secret_in_a_value_is_scrubbed_before_it_is_stored(tmp_path: Path) -> None:
    """A key an endpoint or agent echoed never reaches the disk: the value is scrubbed before diskcache stores
    it, and no file of the directory (cache.db, its log, value files) holds it, compressed or not."""
    from pytest_llmsim.llm.scrubbing import RunSecrets

    secret = "sk-echoed-4b7e1f9a2c"
    secrets = RunSecrets(values=[secret])
    cache = CallCache(tmp_path / "c", RecordMode.ONCE, scrub=secrets.scrub_data)
    descriptor = {"model": "m", "messages": [{"role": "user", "content": f"my key is {secret}"}]}
    cache.store("k", descriptor, {**RESPONSE, "text": f"you said {secret}",
                                  "tool_calls": [{"function": {"name": "f", "arguments": f'{{"k": "{secret}"}}'}}]},
                "a")
    cache.store_marker("m", {"turns": 2, "note": secret})
    stored = cache.lookup("k")
    assert stored is not None and stored["text"] == "you said ***"  # what replays: the placeholder
    cache.close()
    for path in (tmp_path / "c").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data, path
    with sqlite3.connect(tmp_path / "c" / "cache.db") as con:
        values = [zlib.decompress(v).decode() for (v,) in con.execute("SELECT value FROM Cache")]
    assert len(values) == 2 and all(secret not in v for v in values) and "***" in values[0]



def test_a_write_ahead_log_that_vanishes_while_the_cache_is_checked_is_an_empty_log(tmp_path: Path) -> None:
    """The last connection to close a database removes ``cache.db-wal``, so under xdist the log can vanish
    between two looks at it; that is an empty log, not a crash (it failed a CI run as FileNotFoundError in
    one worker). A thread creates and removes a real log file while the check runs."""
    from pytest_llmsim.replay.cache import _check_database_file

    directory = tmp_path / "cache"
    CallCache(directory, RecordMode.ONCE).close()
    wal = directory / "cache.db-wal"
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            wal.write_bytes(b"x" * 10)
            wal.unlink()

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(5000):
            _check_database_file(directory)
    finally:
        stop.set()
        thread.join()
