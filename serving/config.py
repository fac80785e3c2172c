"""The `serving` config section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ingest.contracts import MAX_FIELD_CHARS, MAX_MESSAGES


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VllmConfig(Section):
    """`serving.backend = "vllm"`: the vLLM servers that generate behind Flywheel's gateway."""

    urls: list[str] = Field(
        [],
        description="Existing vLLM OpenAI servers (http://host:port), each started with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, reading adapters from the same paths as Flywheel (shared storage). "
        "Empty: Flywheel starts and supervises one itself from `make vllm`'s virtualenv.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="The key the servers were started with (`--api-key`); pass it as FLYWHEEL_SERVING__VLLM__API_KEY.",
    )
    python: Path | None = Field(
        None,
        description="Started server: the Python of the vLLM virtualenv; unset: .venv-vllm/bin/python (`make vllm`).",
    )
    host: str = Field("127.0.0.1", description="Started server: the address it listens on.")
    port: int = Field(0, ge=0, le=65535, description="Started server: its port; 0 picks a free one.")
    dtype: str = Field(
        "float32",
        description="Started server: --dtype. float32 on CPU gives the same greedy tokens as peft's offline "
        "check; bfloat16 or auto on GPU.",
    )
    max_model_len: int = Field(
        2048, ge=64, description="Started server: --max-model-len (prompt + answer); the KV cache is sized for it."
    )
    kv_cache_gib: float = Field(
        2.0,
        gt=0,
        description="Started server on CPU: VLLM_CPU_KVCACHE_SPACE. Unset, vLLM sized it from the 8,192-token "
        "default context and its worker was killed for memory at 22 GB on a 24 GB machine.",
    )
    max_loras: int = Field(4, ge=1, description="Started server: --max-loras, adapters in one batch (live + canary).")
    max_lora_rank: int = Field(16, ge=1, description="Started server: --max-lora-rank (at least retrain.lora.r).")
    tool_call_parser: str | None = Field(
        "hermes",
        description="Started server: --tool-call-parser with --enable-auto-tool-choice, so `tools` answer with tool "
        "calls; unset: requests with tools get vLLM's 400.",
    )
    extra_args: list[str] = Field(
        [], description="Started server: more `vllm serve` arguments, e.g. --tensor-parallel-size 2."
    )
    start_timeout_s: float = Field(300, gt=0, description="Started server: how long it may take to answer /health.")
    request_timeout_s: float = Field(300, gt=0, description="Longest wait for a vLLM answer (or its next chunk).")
    probe_tokens: int = Field(
        8,
        ge=0,
        description="Greedy tokens of the fixed probe prompt that a loaded adapter must give exactly as peft gave "
        "them offline (its probe.json) before it serves; 0 skips the check.",
    )

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"{', '.join(bad)}: a vLLM server is http://host:port (or https://)")
        if len({u.rstrip("/") for u in urls}) != len(urls):
            raise ValueError("a vLLM server is named twice")
        return urls

    @model_validator(mode="after")
    def _started_only(self) -> VllmConfig:
        own = changed(self, STARTED_ONLY)
        if self.urls and own:
            raise ValueError(
                f"{', '.join('serving.vllm.' + n for n in own)}: settings of the server Flywheel starts; with "
                "serving.vllm.urls, start your servers with them"
            )
        return self


class ServingConfig(Section):
    backend: Literal["torch", "vllm"] = Field(
        "torch",
        description="What generates: `torch` (Flywheel's own batched generator, on CPU) or `vllm` "
        "(vLLM servers behind Flywheel's gateway: serving.vllm).",
    )
    vllm: VllmConfig = Field(default_factory=VllmConfig, description="The vLLM servers (serving.backend = vllm).")
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API listens on; 0 picks a free one.")
    api_keys: dict[str, str] = Field(
        {"demo": "8ff997078e837bdd667c3e354ec4dc40fd7b81fb89eed9ec5413bb25c512edc8"},
        description="App id -> SHA-256 hex of its API key (`flywheel keys hash KEY`). The default holds "
        "the demo app's key 'flywheel-demo-key': replace it outside a laptop.",
    )
    admin_keys: dict[str, str] = Field(
        {"demo-reviewer": "eb2d6be7103a851d0a76ccae692b816c8300da20960e0bb32c030ded224cc99f"},
        description="Reviewer/admin name -> SHA-256 hex of their key, for /review and /v1/admin/*. The "
        "default holds the demo reviewer's key 'flywheel-review-key': replace it outside a laptop.",
    )
    allowed_hosts: list[str] = Field(
        ["127.0.0.1", "localhost", "::1"],
        description="Host header values (without port) this server answers; anything else gets 400, so a web "
        "page that rebinds its name to this address reaches nothing. Add the names clients use when "
        'serving.host is not loopback; ["*"] turns the check off.',
    )
    response_secret: SecretStr | None = Field(
        None,
        description="HMAC key of response ids (at least 32 bytes); unset: generated once into "
        "DATA_DIR/response.secret.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1_024, description="Larger request bodies get 413.")
    max_messages: int = Field(
        64,
        ge=1,
        le=MAX_MESSAGES,
        description="More messages in one chat request get 400 (at most the event contract's 64).",
    )
    max_message_chars: int = Field(
        16_000, ge=1, le=MAX_FIELD_CHARS, description="A longer message gets 400 (at most the event contract's 16,000)."
    )
    max_tokens: int = Field(128, ge=1, description="Default and ceiling of max_tokens per answer.")
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="A longer prompt (after the chat template) gets 400; unset: the model's "
        "context minus serving.max_tokens, which is also the most it may be set to.",
    )
    max_batch_tokens: int = Field(
        32_768,
        ge=1,
        description="KV-cache positions one batch may hold (rows x longest prompt + answer): a "
        "request beyond it waits for rows to finish. ~46 kB per position for the bundled 135M model in fp32.",
    )
    queue_depth: int = Field(64, ge=1, description="Generation requests waiting beyond this get 503.")
    max_batch: int = Field(16, ge=1, description="Most requests decoded together in one batch.")
    max_wait_ms: float = Field(10, ge=0, description="How long a request waits for others to batch with.")
    rate_limit_per_s: float = Field(200, gt=0, description="Requests per second per API key (429 beyond).")
    feedback_window_days: float = Field(
        30,
        gt=0,
        description="Feedback on an answer older than this is refused (404): a response id is not a "
        "key that works forever, and a late rating must not bring back a forgotten user's data.",
    )
    guess_burst: int = Field(
        20, ge=1, description="Wrong API or reviewer keys one client address may send before it gets 429 for every key."
    )
    guess_per_s: float = Field(
        0.5,
        gt=0,
        description="Wrong keys per second an address may send after its "
        "burst: key guessing runs at this rate at most.",
    )
    scrub_cost_per_s: float = Field(
        15_000,
        gt=0,
        description="Scrubbing cost (ingest.contracts.scrub_cost: characters + 20 per digit) of "
        "the text one key may send per second; more gets 429. 15,000 (prose: ~0.3 s of Presidio) keeps honest "
        "ingest at >= 0.8x on 2 cores (bench/scrub_attack.py): size it to your ingest capacity and keys.",
    )
    scrub_cost_burst: int = Field(
        400_000,
        ge=40_000,
        description="Scrubbing cost a key may send at once before scrub_cost_per_s applies "
        "(the largest chat costs ~450,000 only if it is all digits).",
    )
    rate_burst: int = Field(400, ge=1, description="Requests a key may send at once before the rate applies.")

    @field_validator("response_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # A short key is guessable: forged response ids and reviewer cookies would verify.
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError(
                f"{len(value.get_secret_value().encode())} bytes: at least 32 "
                "(python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return value

    @model_validator(mode="after")
    def _backend_settings(self) -> ServingConfig:
        # Settings the chosen backend does not read are refused by name, never silently ignored.
        if self.backend == "vllm":
            own = changed(self, TORCH_ONLY)
            if own:
                raise ValueError(
                    f"{', '.join('serving.' + n for n in own)}: settings of the built-in generator; with "
                    "serving.backend = vllm, vLLM batches and bounds the context (serving.vllm.max_model_len)"
                )
        elif self.vllm != VllmConfig():
            raise ValueError('serving.vllm is set but serving.backend is "torch": set serving.backend = "vllm"')
        return self


def changed(section: BaseModel, names: set[str]) -> list[str]:
    """The settings among `names` that differ from their defaults (a config written out whole by `flywheel
    config show` names every key, at its default)."""
    fields = type(section).model_fields
    return sorted(n for n in names if getattr(section, n) != fields[n].get_default(call_default_factory=True))


STARTED_ONLY = {
    "python", "host", "port", "dtype", "max_model_len", "kv_cache_gib", "max_loras", "max_lora_rank",
    "tool_call_parser", "extra_args", "start_timeout_s",
}  # fmt: skip
TORCH_ONLY = {"max_prompt_tokens", "max_batch_tokens", "queue_depth", "max_batch", "max_wait_ms"}
