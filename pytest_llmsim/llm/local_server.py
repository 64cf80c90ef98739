"""The local model's OpenAI-compatible server process: llama.cpp's own server from the prebuilt ``xllamacpp``
wheel, or llama-cpp-python's server (built from source) with a lean prompt-state cache.

``python -m pytest_llmsim.llm.local_server --engine xllamacpp --model M --port P ...`` runs llama.cpp's C++ server
(``llama-server``: OpenAI-compatible ``/v1/chat/completions`` with ``seed``, ``response_format`` ``json_object``
with a schema and ``json_schema``) inside this process until it is sent SIGTERM or SIGINT. Any other argument list
is that of ``python -m llama_cpp.server``; the local model backend (``local_model.server_command``) starts the
server one way or the other.

llama-cpp-python's cache, why: that server has one llama.cpp context and reuses only the longest common prefix
with the request it served last. A simulated conversation alternates the agent's and the customer's prompts (each
role its own system prompt) and two conversations run at once, so without a cache every call evaluates its whole
history again. llama-cpp-python's RAM cache (``--cache true``) saves the context's state after each completion,
keyed by its tokens, and restores the saved state with the longest common prefix before the next one: each
conversation resumes where its role left off. Its saved states also copy the logits buffer (``n_batch`` x
vocabulary floats: 100 MB for SmolLM2 at ``n_batch`` 512) that nothing reads when ``logits_all`` is off, and the
cache's size limit does not count it: the sample suite's 45 calls grew the server to 4.7 GB. The cache here keeps
one row of that buffer (``load_state`` broadcasts it back), so ``--cache_size`` bounds what the cache holds.
Only for ``--logits_all false`` (the backend's command always passes it): with it on, logprobs need the rows.
llama.cpp's own server does the same natively (``cache_ram_mib``: slot prompts saved to and restored from RAM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

ENGINE_FLAG = "--engine"
XLLAMACPP = "xllamacpp"


def _lean_ram_cache() -> type:
    """llama-cpp-python's RAM prompt cache without the unused logits rows in each saved state."""
    from llama_cpp.llama import LlamaState
    from llama_cpp.llama_cache import LlamaRAMCache

    class LeanRAMCache(LlamaRAMCache):  # type: ignore[misc]  # Any where llama-cpp-python is not installed
        def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
            if value.scores.shape[0] > 1:
                value.scores = value.scores[:1].copy()
            super().__setitem__(key, value)

    return LeanRAMCache


def serve_llama_cpp_python() -> None:
    """Serve as ``python -m llama_cpp.server`` does, with ``--cache true --cache_type ram`` using the lean cache."""
    import llama_cpp
    from llama_cpp.server.__main__ import main as serve

    # llama_cpp.server.model builds its RAM cache from this name (star-imported into llama_cpp: mypy misses it)
    llama_cpp.LlamaRAMCache = _lean_ram_cache()  # type: ignore[attr-defined]
    serve()  # type: ignore[no-untyped-call]  # llama_cpp.server's main has no annotations


def xllamacpp_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_llmsim.llm.local_server --engine xllamacpp",
                                     description="llama.cpp's server (prebuilt xllamacpp wheel) on one GGUF model.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", required=True, help="the model name the server answers to and reports")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ctx", type=int, default=4096, help="context size (tokens)")
    parser.add_argument("--threads", type=int, required=True, help="threads generating tokens")
    parser.add_argument("--threads-batch", type=int, required=True, help="threads evaluating prompts")
    parser.add_argument("--poll", type=int, default=0, help="0-100: how long idle threads spin before sleeping")
    parser.add_argument("--cache-mib", type=int, default=256, help="RAM for saved prompt states")
    parser.add_argument("--http-threads", type=int, default=32)
    return parser


def serve_xllamacpp(argv: Sequence[str]) -> int:
    """Run llama.cpp's server (``xllamacpp.Server``) until SIGTERM/SIGINT. One slot: requests are answered one at
    a time, in order, like llama-cpp-python's server; prompts of other conversations are kept in the RAM cache."""
    args = xllamacpp_parser().parse_args(argv)
    # The prebuilt library runs llama.cpp's threads with OpenMP, whose idle threads spin by default. On a busy
    # runner a spinning thread holds a core the other thread of its team needs: with 2 prompt threads the
    # server used 3x the CPU and took 5x as long (sample workload: 30-36 s, 11-12 s CPU; passive: 5-7 s, 3.7 s).
    # Read when the library loads, so set before the import; a value set by the user wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import xllamacpp as xlc  # type: ignore[import-not-found,import-untyped,unused-ignore]

    params: Any = xlc.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = args.threads
    params.cpuparams.poll = args.poll
    params.cpuparams_batch.n_threads = args.threads_batch
    params.cpuparams_batch.poll = args.poll
    params.cache_ram_mib = args.cache_mib
    # A thread per waiting connection (llama.cpp's default is about one per core): with fewer, the requests
    # queued behind a completion hold every HTTP thread and a liveness probe would wait behind them.
    params.n_threads_http = args.http_threads
    params.ui = False
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    server = xlc.Server(params)  # loads the model, then listens; raises if the model cannot be loaded
    print(f"llmsim: llama.cpp server (xllamacpp) listening on {server.listening_address}", flush=True)
    while not stop.wait(0.5):
        pass
    del server
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == [ENGINE_FLAG, XLLAMACPP]:
        sys.exit(serve_xllamacpp(args[2:]))
    serve_llama_cpp_python()


if __name__ == "__main__":
    main()
