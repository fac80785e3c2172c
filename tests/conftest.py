"""Shared fixtures: a temp data dir, DuckDB with the production schema, one bundled broker per run."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker
from infra.config import KafkaConfig

ROOT = Path(__file__).resolve().parents[1]
# Nothing may reach a hub at run time, in tests least of all.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# No test may meet the nightly job by the wall clock: a `flywheel up` started near 02:00 would run a retrain
# (curate with the default config) in the middle of a test. The schedule's tests set their own clock.
os.environ.setdefault("FLYWHEEL_RETRAIN__SCHEDULE", f"0 {(datetime.now().hour + 12) % 24} * * *")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def db(tmp_path: Path):
    from infra.db import open_store  # here, not at the top: the model tests run where DuckDB is not installed

    con = open_store(tmp_path / "flywheel.duckdb")
    yield con
    con.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One bundled Tansu broker for the whole test run, on a free loopback port."""
    with EmbeddedBroker(KafkaConfig(), tmp_path_factory.mktemp("broker")) as b:
        yield b


def flywheel(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
    """Run the real console entry point in a subprocess, as a user would.

    `timeout` only guards against a hang: `flywheel up --duration 1` takes ~15 s here but over 60 s on a
    loaded CI machine (it loads the model and Presidio), so the bound is generous."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or ROOT,
    )


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer, hidden-size-16 Llama and a 300-token byte-level BPE tokenizer, built from config and
    saved like any Hugging Face model folder (TRL's tiny models): model tests run in seconds."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        "Where is my order? It was supposed to arrive on Tuesday.",
        "You can return unworn items within 30 days for a full refund.",
        "Our headphones come with a one-year limited warranty.",
        "Orders usually ship within 2 business days.",
    ] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def scrub_pool():
    """The real scrubber, in-process (workers=0), loaded once: spaCy + Presidio take a few seconds."""
    from ingest.config import PiiConfig
    from ingest.scrub_pool import ScrubPool

    pool = ScrubPool(PiiConfig(workers=0))
    yield pool
    pool.close()


@pytest.fixture
def browser(tmp_path):
    """Debian's headless Chromium through its chromedriver (the Makefile installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(5)  # find_element waits for a page that is still loading
    yield driver
    driver.quit()


def tiny_generator(tiny_lm: Path, **settings):
    """The tiny model's tokenizer and a started BatchGenerator on it (fp32): what an API test serves."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.generator import BatchGenerator

    model = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    return tokenizer, BatchGenerator(model, tokenizer, **settings).start()


def fused_matrices(model) -> list:
    """The fused [base; adapters' A] matrices serving.lora_batch built in `model`'s LoRA layers."""
    return [m._flywheel_stacks[1][0] for m in model.modules() if hasattr(m, "_flywheel_stacks")]


@contextmanager
def serve_in_thread(app):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def pages_app(backend, admin_keys: dict[str, str], **serving):
    """The API with only the review pages and admin routes working (no model, no outbox): for page tests."""
    from serving.config import ServingConfig
    from tests.helpers.api import make_app

    return make_app(ServingConfig(admin_keys=admin_keys, **serving), review=backend)


@pytest.fixture
def put(db, scrub_pool):
    from tests.helpers.events import store

    return lambda events: store(db, events, scrub_pool.scrub)


@pytest.fixture
def populated(tmp_path, scrub_pool):
    from infra.db import open_store
    from tests.helpers.events import population, store

    data = tmp_path / "var"
    data.mkdir()
    con = open_store(data / "flywheel.duckdb")
    store(con, population(users=60), scrub_pool.scrub)
    con.close()
    return data
