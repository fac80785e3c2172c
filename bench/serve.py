"""Serving benchmarks, each against a baseline measured in the same run.

    .venv/bin/python bench/serve.py [--part feedback|generation|adapters|all]
    .venv/bin/python bench/serve.py --backend vllm     # Flywheel in front of vLLM: bench/vllm_serve.py

feedback:   POST /v1/feedback (auth, HMAC check, durable outbox, shipped to the real bundled broker) versus
            a bare FastAPI no-op POST endpoint, both under uvicorn in a process of their own, loaded by wrk
            (Debian package `wrk`) from a third process. Targets: >= 2,000 req/s and ratio >= 0.5.
generation: 16 concurrent openai clients against the API versus one static batch of 16 through
            `model.generate`, same model (SmolLM2-135M, fp32), tokens/s. Target ratio >= 0.8.
adapters:   the same 16 clients with users split across two LoRA adapters versus all on the base model.
            Target ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = "bench-key"
QUESTIONS = [
    "How long does shipping to Canada take?",
    "Can I return a jacket that does not fit?",
    "What is your warranty policy for headphones?",
    "How do I change my delivery address?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(url)


def wrk(url: str, body: dict, seconds: int = 10, connections: int = 64) -> tuple[float, float]:
    """(requests/s, p99 ms) of POSTing `body` to `url` with wrk, 2 threads."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("P99 %f\\nERRORS %d\\n", latency:percentile(99) / 1000,'
        " summary.errors.status + summary.errors.connect + summary.errors.timeout))\nend\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = float(re.search(r"P99 ([\d.]+)", out).group(1))
    errors = int(re.search(r"ERRORS (\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or non2xx:
        raise RuntimeError(f"wrk saw errors: {out}")
    return rps, p99


NOOP_APP = """
import uvicorn
from fastapi import FastAPI, Request
app = FastAPI()
@app.post("/noop")
async def noop(request: Request):
    await request.body()
    return {"ok": True}
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False)
"""


def bench_feedback() -> None:
    if shutil.which("wrk") is None:
        sys.exit("the feedback benchmark needs wrk: apt-get install wrk")
    from serving import ids

    with tempfile.TemporaryDirectory() as tmp:
        port_noop, port_api = free_port(), free_port()
        noop = subprocess.Popen([sys.executable, "-c", NOOP_APP.replace("{port}", str(port_noop))])
        from infra.models import resolve_base_model

        model = resolve_base_model("bundled:SmolLM2-135M-Instruct", ROOT / "var" / "models")
        env = {
            **os.environ,
            "FLYWHEEL_DATA_DIR": tmp,
            "FLYWHEEL_SERVING__PORT": str(port_api),
            "FLYWHEEL_BASE_MODEL": str(model),
            "FLYWHEEL_SERVING__API_KEYS": f'{{bench = "{ids.hash_key(KEY)}"}}',
            "FLYWHEEL_SERVING__RATE_LIMIT_PER_S": "1000000",
            "FLYWHEEL_SERVING__RATE_BURST": "1000000",
        }
        subprocess.run([sys.executable, "-m", "infra.cli", "broker", "start"], env=env, check=True, capture_output=True)
        api = subprocess.Popen([sys.executable, "-m", "infra.cli", "serve"], env=env)
        try:
            wait_http(f"http://127.0.0.1:{port_noop}/docs")
            wait_http(f"http://127.0.0.1:{port_api}/healthz")
            import openai

            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port_api}/v1", api_key=KEY)
            reply = client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, user="bench-user"
            )
            body = {"response_id": reply.id, "rating": "up"}
            wrk(f"http://127.0.0.1:{port_noop}/noop", body, seconds=3)  # warm both up
            wrk(f"http://127.0.0.1:{port_api}/v1/feedback", body, seconds=3)
            base_rps, base_p99 = wrk(f"http://127.0.0.1:{port_noop}/noop", body)
            rps, p99 = wrk(f"http://127.0.0.1:{port_api}/v1/feedback", body)
        finally:
            api.terminate()
            api.wait(30)
            noop.terminate()
            subprocess.run([sys.executable, "-m", "infra.cli", "broker", "stop"], env=env, capture_output=True)
    print(f"feedback: {rps:,.0f} req/s, p99 {p99:.1f} ms (target >= 2,000 req/s)")
    print(f"bare FastAPI no-op: {base_rps:,.0f} req/s, p99 {base_p99:.1f} ms")
    print(f"ratio: {rps / base_rps:.2f} (target >= 0.5)")


def load_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infra.models import resolve_base_model

    torch.set_num_threads(os.cpu_count())
    path = resolve_base_model("bundled:SmolLM2-135M-Instruct", ROOT / "var" / "models")
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def static_batch(model, tokenizer, n: int, max_tokens: int) -> float:
    """tokens/s of one padded batch of n prompts through model.generate."""
    import torch

    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[i % 4]}], add_generation_prompt=True, tokenize=False
        )
        for i in range(n)
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    elapsed = time.perf_counter() - started
    new = out[:, batch["input_ids"].shape[1] :]
    tokens = int((new != tokenizer.pad_token_id).sum())
    return tokens / elapsed


def concurrent_clients(url: str, clients: int, rounds: int, max_tokens: int, model: str = "x") -> float:
    """tokens/s of `clients` threads, each sending `rounds` chat requests one after another."""
    import openai

    totals = []

    def client(i: int) -> None:
        c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=600)
        n = 0
        for r in range(rounds):
            reply = c.chat.completions.create(
                model=model,
                user=f"user-{i}",
                max_tokens=max_tokens,
                temperature=0,
                messages=[{"role": "user", "content": QUESTIONS[(i + r) % 4]}],
            )
            n += reply.usage.completion_tokens
        totals.append(n)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(totals) / (time.perf_counter() - started)


def start_api(tmp: Path, tokenizer, model, routing: dict | None, loaded: bool = False):
    """An API in threads of this process; `loaded`: `model` already holds `routing`'s adapters."""

    from abtest.routing import Routing
    from serving.generator import BatchGenerator
    from serving.routing import ModelHolder, Router, publish

    gen = BatchGenerator(model, tokenizer, max_batch=16, max_wait_ms=20).start()
    holder = ModelHolder(gen)
    if routing and loaded:
        holder.loaded = dict(routing["adapters"])
    router = Router(tmp / "routing.json", holder)
    if routing:
        publish(tmp, Routing.parse(routing))
    router.refresh()
    server, url = serve_app(tmp, router, generator=gen, tokenizer=tokenizer)
    return server, gen, url


def serve_app(tmp: Path, router, **parts):
    """The API on `router` with bench keys and limits, under uvicorn in a thread: (server, base url)."""
    import uvicorn

    from serving import ids
    from serving.app import create_app
    from serving.config import ServingConfig
    from serving.outbox import Outbox

    backend = "vllm" if parts.get("upstream") is not None else "torch"
    cfg = ServingConfig(
        backend=backend, api_keys={"bench": ids.hash_key(KEY)}, max_tokens=512, rate_limit_per_s=1e6, rate_burst=10**6
    )
    parts = {"generator": None, "tokenizer": None, **parts}
    app = create_app(
        cfg, outbox=Outbox(tmp / "outbox.sqlite"), chats_topic="c", feedback_topic="f", secret=b"s" * 32,
        user_key=b"u" * 32, route=router.route, variants=router.variants, **parts,
    )  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1"


def make_adapters(tmp: Path, model) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    out = {}
    for i, version in enumerate(["v0001", "v0002"]):
        torch.manual_seed(i)
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"), adapter_name=version)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.001)
        peft.save_pretrained(tmp / version)
        out[version] = str(tmp / version / version) if (tmp / version / version).exists() else str(tmp / version)
        model = peft.unload()
    return out


def api_tokens_per_s(folder: Path, tokenizer, model, routing: dict | None, max_tokens: int, rounds: int) -> float:
    """16 concurrent clients against a fresh API on `model`, with `routing` published first."""
    folder.mkdir()
    server, gen, url = start_api(folder, tokenizer, model, routing)
    try:
        return concurrent_clients(url, 16, rounds, max_tokens)
    finally:
        server.should_exit = True
        gen.close()


def bench_generation(parts: set[str], max_tokens: int = 48, rounds: int = 2, repeat: int = 5) -> None:
    import statistics

    tokenizer, model = off_main(load_model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "generation" in parts:
            baseline = off_main(lambda: static_batch(model, tokenizer, 16, max_tokens))
            ours = api_tokens_per_s(tmp / "a", tokenizer, model, None, max_tokens, rounds)
            print(f"static batch of 16 through generate: {baseline:,.1f} tokens/s")
            print(f"16 concurrent clients through the API: {ours:,.1f} tokens/s")
            print(f"ratio: {ours / baseline:.2f} (target >= 0.8)")
        if "adapters" in parts:
            # Two models (loading adapters wraps a model's layers in place), each served by a fresh API in
            # turns so that both see the same machine noise; the median ratio counts. Only one API (one
            # generator thread) lives at a time, as in `flywheel serve`: an idle generator thread that has
            # run OpenMP regions slows another's by ~25% here, the adapters' many small ops more.
            adapters = off_main(lambda: make_adapters(tmp, load_model()[1]))
            routing = {
                "experiment_id": "bench",
                "salt": "b",
                "split": [["v0001", 0.5], ["v0002", 0.5]],
                "adapters": adapters,
            }
            models = {"base": (model, None), "mixed": (off_main(load_model)[1], routing)}
            ratios, turns, ready = [], itertools.count(), {}

            def measure(name: str) -> float:
                folder = tmp / f"{name}-{next(turns)}"
                folder.mkdir()
                model, route = models[name]
                server, gen, url = start_api(folder, tokenizer, model, route, loaded=name in ready)
                try:
                    concurrent_clients(url, 16, 1, 8)  # warm up (the fused stacks are built once per model)
                    return concurrent_clients(url, 16, rounds, max_tokens)
                finally:
                    models[name], ready[name] = (gen.model, route), True  # adapters load once
                    server.should_exit = True
                    gen.close()

            for i in range(repeat):
                base, mixed = measure("base"), measure("mixed")
                ratios.append(mixed / base)
                print(
                    f"turn {i + 1}: base model only {base:,.1f} tokens/s, users split across two adapters "
                    f"{mixed:,.1f} tokens/s, ratio {mixed / base:.3f}"
                )
            print(f"ratio (median of {repeat} turns): {statistics.median(ratios):.3f} (target >= 0.9)")


def off_main(fn):
    """fn() in a short-lived thread. The bench's own torch work (loading, the static batch, making adapters)
    runs this way, as `flywheel serve` runs no model in its main thread: while a thread that has run OpenMP
    parallel regions lives (the main thread always does), the generator thread's regions run ~45% slower on
    this 2-core machine, and the many small ops of the adapters' path more so."""
    out: list = []

    def run():
        try:
            out.append(fn())
        except BaseException as e:  # re-raised in the calling thread
            out.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["feedback", "generation", "adapters", "all"], default="all")
    parser.add_argument("--backend", choices=["torch", "vllm"], default="torch", help="vllm: bench/vllm_serve.py")
    args = parser.parse_args()
    if args.backend == "vllm":
        if args.part != "all":
            parser.error("--part is for the torch backend; --backend vllm measures the gateway and adapters")
        from bench import vllm_serve

        print(f"cores: {os.cpu_count()}")
        vllm_serve.bench()
        return
    parts = {"feedback", "generation", "adapters"} if args.part == "all" else {args.part}
    print(f"cores: {os.cpu_count()}")
    if "feedback" in parts:
        bench_feedback()
    if parts & {"generation", "adapters"}:
        bench_generation(parts)


if __name__ == "__main__":
    main()
