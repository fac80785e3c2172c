"""`bench/serve.py --backend vllm`: Flywheel's gateway in front of a real vLLM server (the CPU build from
`make vllm`, started as `flywheel up` starts it), SmolLM2-135M, 16 concurrent openai clients, tokens/s.

gateway:  through Flywheel (keys, routing, response ids, the durable outbox) versus straight to the same vLLM
          server, interleaved rounds (each first in half of them), medians. Target ratio >= 0.95.
adapters: through Flywheel, users split across two LoRA adapters versus all on the base model. On GPU the
          target is >= 0.9; vLLM's CPU LoRA path (punica in plain PyTorch) is what limits it on CPU.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.serve import ROOT, concurrent_clients, serve_app


def adapters(base: Path, tmp: Path) -> dict[str, str]:
    """Two adapters with random non-zero LoRA weights on every linear layer, with their probes."""
    from transformers import AutoTokenizer

    from tests.helpers.adapters import random_adapter

    tokenizer = AutoTokenizer.from_pretrained(base)
    for i, version in enumerate(("v0001", "v0002")):
        random_adapter(base, tmp / version, i, tokenizer)
    return {v: str(tmp / v) for v in ("v0001", "v0002")}


def gateway(tmp: Path, backend):
    """Flywheel's API on `backend` in threads of this process, and its Router (publish, then refresh)."""
    from serving.routing import Router

    router = Router(tmp / "routing.json", backend)
    server, url = serve_app(tmp, router, upstream=backend)
    return server, router, url


def bench(max_tokens: int = 48, rounds: int = 2, repeat: int = 4) -> None:
    from abtest.routing import Routing
    from infra.models import resolve_base_model
    from infra.vllm import VllmProcess
    from ingest.contracts import BASE
    from serving.config import VllmConfig
    from serving.routing import publish
    from serving.upstream import VllmBackend

    base = resolve_base_model("bundled:SmolLM2-135M-Instruct", ROOT / "var" / "models")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folders = adapters(base, tmp)
        cfg = VllmConfig()
        started = time.perf_counter()
        with VllmProcess(cfg, base, tmp, supervise=False) as vllm:
            print(f"vLLM ready in {time.perf_counter() - started:.1f} s (dtype {cfg.dtype}, log {vllm.log_path})")
            backend = VllmBackend([vllm.url], cfg)
            backend.check()  # as `flywheel up` does before it serves
            server, router, url = gateway(tmp, backend)
            direct = f"{vllm.url}/v1"
            concurrent_clients(url, 16, 1, 8)  # warm both paths
            runs: dict[str, list[float]] = {"direct": [], "gateway": [], "adapters": []}
            cpu: dict[str, list[float]] = {"direct": [], "gateway": []}
            half = ((BASE, 0.0), ("v0001", 0.5), ("v0002", 0.5))

            def measure(name: str, to: str, model: str = "x") -> None:
                before = time.process_time()  # this process: the clients, and the gateway when it is used
                runs[name].append(concurrent_clients(to, 16, rounds, max_tokens, model=model))
                cpu.setdefault(name, []).append((time.process_time() - before) / (16 * rounds))

            for i in range(repeat):
                publish(tmp, Routing(None, "bench", ((BASE, 1.0),), {}))
                router.refresh()
                pair = [("direct", direct, "base"), ("gateway", url, "x")]
                for name, to, model in pair if i % 2 == 0 else pair[::-1]:  # neither always goes first
                    measure(name, to, model)
                publish(tmp, Routing(None, "bench", half, folders))
                router.refresh()
                measure("adapters", url)
            server.should_exit = True
            backend.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in runs.items():
        print(f"{k:9s} {med[k]:7.1f} tokens/s  (runs: {', '.join(f'{x:.1f}' for x in v)})")
    gateway_ms = 1000 * (statistics.median(cpu["gateway"]) - statistics.median(cpu["direct"]))
    print(f"gateway CPU per request: {gateway_ms:.1f} ms (this process's CPU time, gateway runs minus direct runs)")
    print(f"gateway / direct:   {med['gateway'] / med['direct']:.3f}  (target >= 0.95)")
    print(f"adapters / base:    {med['adapters'] / med['gateway']:.3f}  (GPU target >= 0.9; CPU: vLLM's LoRA kernels)")
