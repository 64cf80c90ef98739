"""Speed of the bundled local model on this machine: prompt and generation tokens per second.

    python benchmarks/local_model.py --replies 5

Starts the same llama.cpp server the plugin starts (bundled SmolLM2 GGUF unless --model), sends ``--replies``
chat requests of about the plugin's size (a ~300-token system prompt, up to 80 reply tokens, fixed seeds) and
prints per-request latency and tokens per second. Generation speed is measured from requests whose prompt is
already cached by the server (same prompt again), so it excludes prompt evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from pytest_llmsim import local_model

SYSTEM = (Path(__file__).resolve().parent.parent / "prompts" / "agent.j2").read_text(encoding="utf-8")


def chat(base_url: str, system: str, user: str, max_tokens: int, seed: int) -> tuple[float, dict]:
    body = json.dumps({"model": local_model.LOCAL_MODEL_NAME, "max_tokens": max_tokens, "temperature": 0.7,
                       "seed": seed, "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": user}]}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        data = json.loads(response.read())
    return time.perf_counter() - started, data["usage"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    model = args.model or local_model.find_bundled_model()
    if model is None:
        raise SystemExit(local_model.missing_backend_message())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        server = local_model.ensure_local_server(model, Path(tmp) / "state", os.getpid())
        load_s = time.perf_counter() - started
        try:
            cold, warm = [], []
            for i in range(args.replies):
                system = f"Call #{i}. " + SYSTEM  # a new prefix: the whole prompt is evaluated
                user = "Hello, I would like two packs of chicken fillet delivered to Moscow."
                cold.append(chat(server.base_url, system, user, args.max_tokens, seed=i))
                warm.append(chat(server.base_url, system, user, args.max_tokens, seed=i + 1000))
        finally:
            local_model.stop_local_server(Path(tmp) / "state")
    gen_rates = [u["completion_tokens"] / s for s, u in warm]
    prompt_rates = []
    for cold_s, cold_u in cold:
        gen_time = cold_u["completion_tokens"] / statistics.median(gen_rates)
        prompt_rates.append(cold_u["prompt_tokens"] / max(cold_s - gen_time, 1e-3))
    print(f"model={model.name} load+smoke_s={load_s:.2f} replies={args.replies} max_tokens={args.max_tokens}")
    print(f"cold request (full prompt eval): median {statistics.median(s for s, _ in cold):.2f}s, "
          f"prompt {statistics.median(u['prompt_tokens'] for _, u in cold)} tokens, "
          f"reply {statistics.median(u['completion_tokens'] for _, u in cold)} tokens")
    print(f"generation: median {statistics.median(gen_rates):.1f} tokens/s; "
          f"prompt evaluation: median {statistics.median(prompt_rates):.0f} tokens/s")


if __name__ == "__main__":
    main()
