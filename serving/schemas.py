"""The request bodies the API accepts, strictly as /openapi.json states them (no "stream": 0 for false, no
"8" for 8), except that a whole float is an integer as JSON Schema has it. Limits that the event contract
also holds come from `ingest.contracts`, so an accepted request always makes a storable event."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ingest import contracts

ROLES = get_args(contracts.Message.model_fields["role"].annotation)


def _whole(value):
    """JSON Schema's integers include 8.0; strict pydantic takes only 8."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_whole)]
Count = Annotated[int, Field(ge=1), BeforeValidator(_whole)]
MAX_STOPS, MAX_STOP_CHARS = 4, 64
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class ContentPart(BaseModel):
    """One part of a message's `content` list (what LangChain and the newer SDKs send). Only `text` parts are
    read; the handler refuses any other type by name."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: str = Field(json_schema_extra={"enum": ["text"]})
    text: str | None = None  # /openapi.json says: a string, required (the handler refuses the rest by name)


class ChatMessage(BaseModel):
    # Messages are data, not parameters: an assistant message sent back as the SDK returned it carries
    # `refusal`, `audio`, `annotations`... as null, and those are taken and dropped.
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str = Field(json_schema_extra={"enum": [*ROLES, "developer"]})  # checked in the handler
    content: str | list[ContentPart] | None = ""
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


MAX_CHOICES = 8


class ChatRequest(BaseModel):
    """Every parameter of OpenAI's chat completions request that Flywheel knows. An unknown one is refused
    (400 naming it), and one the serving backend cannot honour is refused by the handler: none is ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES), BeforeValidator(_whole)] = 1
    # OpenAI allows 4; 80,000 were accepted once (1.16 s of the shared model thread per answer to check them).
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)] | None = None
    seed: Int | None = None  # any integer: the generator takes it modulo 2**64
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=contracts.MAX_ID_CHARS)
    # What the built-in generator does not do (serving.routes.chat.UNSUPPORTED names them in its 400).
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), BeforeValidator(_whole)] | None = None
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    response_id: str = Field(max_length=contracts.MAX_RESPONSE_ID_CHARS)
    choice: Annotated[int, Field(ge=0, lt=MAX_CHOICES), BeforeValidator(_whole)] = Field(
        0, description="Which of the answer's choices (its `index`) is rated, when it was asked with n > 1."
    )
    rating: str | Int = Field(description="up | down (or 1 | -1)", json_schema_extra={"enum": ["up", "down", 1, -1]})
    comment: str | None = Field(None, max_length=contracts.MAX_FIELD_CHARS)
    correction: str | None = Field(None, max_length=contracts.MAX_FIELD_CHARS)


# A reason with something besides blanks: ECMA-262's \s, plus what Python's str.isspace adds (\x1c-\x1f, \x85),
# so this schema and curation.review.BLANK call the same reasons empty (Schemathesis found "\x1d\x1d").
REASON_PATTERN = "[^\\s\\u001c-\\u001f\\u0085]"


class DecisionRequest(BaseModel):
    # A rejection needs a reason (curation.review checks it; the schema says so for clients).
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "if": {"properties": {"decision": {"const": "reject"}}},
            "then": {"required": ["reason"], "properties": {"reason": {"type": "string", "pattern": REASON_PATTERN}}},
        },
    )
    sample_ids: list[str] = Field(min_length=1, max_length=10_000)
    decision: str = Field(pattern="^(approve|reject)$")
    reason: str | None = Field(None, max_length=2_000)


class ForgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    app: str = Field(
        min_length=1,
        max_length=contracts.MAX_ID_CHARS,
        description="The app (a name in "
        "serving.api_keys) that sent the user's requests: a user is (app, user), and two apps' ids "
        "never mix.",
    )
    user: str = Field(
        min_length=1, max_length=contracts.MAX_ID_CHARS, description="The user id, exactly as the app sent it."
    )


# The `flywheel` commands a reviewer may run in the service (`infra.remote`): reads, reviews, A/B decisions, erasure.
REMOTE_COMMANDS = (
    "ab status", "ab report", "ab decide", "ab stop", "review list", "review approve", "review reject", "adapters list",
    "adapters history", "forget", "db info", "audit show", "audit verify",
)  # fmt: skip


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    command: Literal[REMOTE_COMMANDS] = Field(  # type: ignore[valid-type]
        description="The `flywheel` command, as typed after `flywheel`."
    )
    args: list[Annotated[str, Field(max_length=2_000)]] = Field(
        [],
        max_length=64,
        description='Its arguments and options, e.g. ["s-1", "--reason", "ok"]; ones it does not take are its '
        "usage error (exit_code 2), as on the command line.",
    )
