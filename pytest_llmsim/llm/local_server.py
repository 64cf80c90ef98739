"""llama-cpp-python's OpenAI-compatible server, with a prompt-state cache that keeps conversations' prefixes.

Run as ``python -m pytest_llmsim.llm.local_server`` with the flags of ``python -m llama_cpp.server``; the local
model backend (``local_model.server_command``) starts the server this way.

Why: the server has one llama.cpp context and reuses only the longest common prefix with the request it served
last. A simulated conversation alternates the agent's and the customer's prompts (each role its own system
prompt) and two conversations run at once, so without a cache every call evaluates its whole history again.
llama-cpp-python's RAM cache (``--cache true``) saves the context's state after each completion, keyed by its
tokens, and restores the saved state with the longest common prefix before the next one: each conversation
resumes where its role left off. Its saved states also copy the logits buffer (``n_batch`` x vocabulary
floats: 100 MB for SmolLM2 at ``n_batch`` 512) that nothing reads when ``logits_all`` is off, and the cache's
size limit does not count it: the sample suite's 45 calls grew the server to 4.7 GB. The cache here keeps one
row of that buffer (``load_state`` broadcasts it back), so ``--cache_size`` bounds what the cache holds.
Only for ``--logits_all false`` (the backend's command always passes it): with it on, logprobs need the rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp
from llama_cpp.llama import LlamaState
from llama_cpp.llama_cache import LlamaRAMCache


class LeanRAMCache(LlamaRAMCache):
    """llama-cpp-python's RAM prompt cache without the unused logits rows in each saved state."""

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        if value.scores.shape[0] > 1:
            value.scores = value.scores[:1].copy()
        super().__setitem__(key, value)


def main() -> None:
    """Serve as ``python -m llama_cpp.server`` does, with ``--cache true --cache_type ram`` using the lean cache."""
    from llama_cpp.server.__main__ import main as serve

    # llama_cpp.server.model builds its RAM cache from this name (star-imported into llama_cpp: mypy misses it)
    llama_cpp.LlamaRAMCache = LeanRAMCache  # type: ignore[attr-defined]
    serve()  # type: ignore[no-untyped-call]  # llama_cpp.server's main has no annotations


if __name__ == "__main__":
    main()
