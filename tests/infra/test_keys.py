"""No default door: the README's public keys are not served by `up`/`serve` unless asked for, on loopback."""

import hashlib
import json

import pytest

from infra import keys
from infra.config import load_config
from infra.errors import FlywheelError
from tests.conftest import flywheel


def test_default_keys_are_replaced_by_keys_generated_once(tmp_path):
    cfg = load_config(overrides=[f"data_dir={tmp_path}"], env={})
    assert len(keys.public_keys(cfg.serving)) == 2  # the shipped config holds both README keys
    printed = []
    served = keys.service_keys(cfg, demo_keys=False, echo=printed.append)
    assert keys.public_keys(served.serving) == [] and len(printed) == 2
    app_key = printed[0].split(": ")[1].split()[0]
    reviewer_key = printed[1].split(": ")[1].split()[0]
    assert served.serving.api_keys == {"app": hashlib.sha256(app_key.encode()).hexdigest()}
    assert served.serving.admin_keys == {"reviewer": hashlib.sha256(reviewer_key.encode()).hexdigest()}
    stored = (tmp_path / "keys.json").read_text()
    assert app_key not in stored and reviewer_key not in stored  # hashes only
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    again = []
    assert keys.service_keys(cfg, demo_keys=False, echo=again.append).serving == served.serving and again == []
    assert json.loads(stored)["api_keys"] == served.serving.api_keys


def test_a_public_key_in_a_configured_table_or_off_loopback_is_refused(tmp_path):
    demo = hashlib.sha256(b"flywheel-demo-key").hexdigest()
    mixed = load_config(
        overrides=[f"data_dir={tmp_path}", f'serving.api_keys={{shop = "{"0" * 64}", demo = "{demo}"}}'], env={}
    )
    with pytest.raises(FlywheelError, match=r"serving.api_keys\[demo\] = flywheel-demo-key"):
        keys.service_keys(mixed, demo_keys=False)
    assert keys.service_keys(mixed, demo_keys=True) is mixed  # a laptop may ask for them
    wide = load_config(overrides=[f"data_dir={tmp_path}", "serving.host=0.0.0.0"], env={})
    with pytest.raises(FlywheelError, match="loopback only"):
        keys.service_keys(wide, demo_keys=True)
    out = flywheel(
        "serve", "--demo-keys", env={"FLYWHEEL_DATA_DIR": str(tmp_path), "FLYWHEEL_SERVING__HOST": "0.0.0.0"}
    )
    assert out.returncode == 2 and "the demo keys are public" in out.stderr
