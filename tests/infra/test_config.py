from pathlib import Path

import pytest
import tomli_w
from pydantic import ValidationError

from infra.config import (
    Config,
    ConfigError,
    load_config,
    parse_value,
    reference_markdown,
    reference_rows,
    split_overrides,
    to_toml_dict,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flywheel.toml"
    path.write_text(text)
    return path


def test_defaults_are_embedded():
    cfg = load_config(env={})
    assert cfg.data_dir == Path("var")
    assert cfg.kafka.bootstrap_servers is None
    assert cfg.db_path == Path("var/flywheel.duckdb")
    assert cfg.retrain.lora.r == 16


def test_later_sources_win(tmp_path):
    path = write(tmp_path, "[retrain.lora]\nr = 4\nalpha = 8\n")
    assert load_config(path, env={}).retrain.lora.r == 4
    env = {"FLYWHEEL_RETRAIN__LORA__R": "8"}
    assert load_config(path, env=env).retrain.lora.r == 8
    cfg = load_config(path, ["retrain.lora.r=12"], env=env)
    assert cfg.retrain.lora.r == 12
    assert cfg.retrain.lora.alpha == 8  # merged, not replaced: the file's sibling key survives


def test_config_file_from_environment(tmp_path):
    path = write(tmp_path, 'data_dir = "/srv/flywheel"\n')
    assert load_config(env={"FLYWHEEL_CONFIG": str(path)}).data_dir == Path("/srv/flywheel")


def test_top_level_and_nested_environment():
    cfg = load_config(env={"FLYWHEEL_DATA_DIR": "/tmp/x", "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert cfg.data_dir == Path("/tmp/x")
    assert cfg.kafka.bootstrap_servers == "k1:9092,k2:9092"


@pytest.mark.parametrize(
    "raw, value",
    [("16", 16), ("0.5", 0.5), ("true", True), ("[1, 2]", [1, 2]), ("host:9092", "host:9092"), ("nf4", "nf4")],
)
def test_parse_value(raw, value):
    assert parse_value(raw) == value


def test_unknown_key_names_key_origin_and_accepted(tmp_path):
    path = write(tmp_path, "[retrain.lora]\nrank = 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    msg = str(e.value)
    assert "'retrain.lora.rank'" in msg and str(path) in msg
    assert "r, alpha, dropout, target_modules" in msg
    assert "\n" not in msg


def test_unknown_section_from_environment():
    with pytest.raises(ConfigError, match="unknown config key 'trainer'.*FLYWHEEL_TRAINER__STEPS.*retrain"):
        load_config(env={"FLYWHEEL_TRAINER__STEPS": "3"})


def test_bad_type_names_key_and_value():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["retrain.lora.r=many"], env={})
    msg = str(e.value)
    assert "'retrain.lora.r'" in msg and "'many'" in msg and "override" in msg


def test_bad_choice_and_range():
    with pytest.raises(ConfigError, match="retrain.quantization"):
        load_config(overrides=["retrain.quantization=int3"], env={})
    with pytest.raises(ConfigError, match="kafka.port"):
        load_config(overrides=["kafka.port=70000"], env={})


def test_value_where_section_expected():
    with pytest.raises(ConfigError, match="'retrain.lora' is a value"):
        load_config(overrides=["retrain.lora=3", "retrain.lora.r=4"], env={})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[kafka\n"), env={})


def test_sections_are_frozen():
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.kafka.partitions = 3


def test_split_overrides_keeps_other_arguments():
    rest, overrides = split_overrides(["up", "retrain.lora.r=16", "--duration", "3", "data_dir=/x", "name=x"])
    assert overrides == ["retrain.lora.r=16", "data_dir=/x"]
    assert rest == ["up", "--duration", "3", "name=x"]


def test_secrets_are_masked():
    cfg = load_config(overrides=["kafka.sasl_plain_password=hunter2"], env={})
    assert cfg.kafka.sasl_plain_password.get_secret_value() == "hunter2"
    assert "hunter2" not in str(to_toml_dict(cfg))


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_config_files_validate(path):
    assert path.read_text().startswith("#"), "a shipped config starts with the command that uses it"
    load_config(path, env={})


def test_shipped_config_exists():
    assert list((ROOT / "config").glob("*.toml"))


def test_every_field_is_documented_and_the_readme_table_is_current():
    for key, _default, doc in reference_rows():
        assert doc, f"{key} has no description"
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    table = readme[readme.index(start) + len(start) : readme.index(end)]
    assert table.strip() == reference_markdown(), "regenerate with: flywheel config reference"


def test_secrets_shorter_than_32_bytes_are_refused(tmp_path):
    """A short key lets anyone forge response ids and reviewer cookies; an empty secret file (a crash of an
    older version) is refused too, and a new one is written whole or not at all."""
    from infra import keys
    from infra.api import response_secret
    from infra.errors import FlywheelError

    for short in ("", "x", "a" * 31):
        with pytest.raises(ConfigError, match="at least 32"):
            load_config(overrides=[f"serving.response_secret={short}"], env={})
    assert load_config(overrides=["serving.response_secret=" + "a" * 32], env={})
    (tmp_path / "response.secret").write_text("")
    with pytest.raises(FlywheelError, match="0 bytes: a secret needs at least 32"):
        response_secret(load_config(overrides=[f"data_dir={tmp_path}"], env={}))
    fresh = keys.file_secret(tmp_path / "new.secret")
    assert len(fresh) == 64 and (tmp_path / "new.secret").stat().st_mode & 0o777 == 0o600
    assert keys.file_secret(tmp_path / "new.secret") == fresh and not list(tmp_path.glob(".*.tmp"))
    assert keys.derive(fresh, "a") != keys.derive(fresh, "b")


def test_the_vllm_backend_refuses_settings_only_the_builtin_generator_reads(tmp_path):
    """Nothing silently ignored: a batching knob of the torch generator set with vLLM behind is an error, and so
    is a vLLM section with the torch backend."""
    cfg = load_config(overrides=["serving.backend=vllm", 'serving.vllm.urls=["http://gpu-1:8000"]'], env={})
    assert cfg.serving.vllm.urls == ["http://gpu-1:8000"]
    with pytest.raises(ConfigError, match=r"serving\.max_batch, serving\.queue_depth: settings of the built-in"):
        load_config(overrides=["serving.backend=vllm", "serving.queue_depth=9", "serving.max_batch=4"], env={})
    with pytest.raises(ConfigError, match='serving.backend is "torch"'):
        load_config(overrides=["serving.vllm.max_loras=8"], env={})
    with pytest.raises(ConfigError, match="serving.backend"):
        load_config(overrides=["serving.backend=tensorrt"], env={})
    for written in (cfg, load_config(env={})):  # a config written out whole (every key, defaults too) loads back
        path = write(tmp_path, tomli_w.dumps(to_toml_dict(written)))
        assert load_config(path, env={}).serving == written.serving
    with pytest.raises(ConfigError, match="gpu-1:8000: a vLLM server is http://host:port"):
        load_config(overrides=["serving.backend=vllm", 'serving.vllm.urls=["gpu-1:8000"]'], env={})
    with pytest.raises(ConfigError, match="serving.vllm.dtype, serving.vllm.max_loras: settings of the server"):
        urls = 'serving.vllm.urls=["http://gpu-1:8000"]'
        load_config(
            overrides=["serving.backend=vllm", urls, "serving.vllm.dtype=bfloat16", "serving.vllm.max_loras=8"], env={}
        )
