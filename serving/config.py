"""The `serving` config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ingest.contracts import MAX_FIELD_CHARS, MAX_MESSAGES


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServingConfig(Section):
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
