"""Applying what serving reports: an adapter vLLM could not load right ends its experiment and is marked failed."""

import pytest

from abtest import experiment
from abtest.routing import Routing
from curation import audit
from infra import ab
from infra.config import Config
from infra.errors import FlywheelError
from retrain import registry


def live_and_candidate(db, tmp_path) -> Config:
    """v0001 live, v0002 a candidate, both with a folder; the config of that data dir."""
    for version, status in (("v0001", "live"), ("v0002", "candidate")):
        (tmp_path / version).mkdir()
        registry.register(
            db, version, status=status, parent=None, base_model="b", base_hash=None, snapshot_id=None,
            path=str(tmp_path / version), metrics={},
        )  # fmt: skip
    return Config(data_dir=tmp_path)


def test_an_adapter_serving_could_not_load_is_failed_and_the_incumbent_serves_alone(db, tmp_path):
    cfg = live_and_candidate(db, tmp_path)
    exp = ab.start_experiment(cfg, db, "v0002")
    assert "v0002" in Routing.read(tmp_path / "routing.json").adapters

    said = ab.adapter_failed(cfg, db, "v0002", "the probe answered [1, 2], peft [3, 4]")

    assert registry.get(db, "v0002")["status"] == "failed"
    assert "probe" in registry.get(db, "v0002")["reason"]
    assert experiment.get(db) is None and experiment.get(db, exp.experiment_id).status != "running"
    assert Routing.read(tmp_path / "routing.json").split == (("v0001", 1.0),)
    assert registry.live(db)["version"] == "v0001"
    assert len(said) == 2


def test_a_live_adapter_is_never_marked_failed_by_a_reload(db, tmp_path):
    cfg = Config(data_dir=tmp_path)
    registry.register(
        db, "v0001", status="live", parent=None, base_model="b", base_hash=None, snapshot_id=None,
        path=str(tmp_path), metrics={},
    )  # fmt: skip
    ab.adapter_failed(cfg, db, "v0001", "a server restarted and refused it")
    assert registry.get(db, "v0001")["status"] == "live"


def test_stopping_an_experiment_rolls_the_challenger_back_and_keeps_the_incumbent(db, tmp_path):
    cfg = live_and_candidate(db, tmp_path)
    with pytest.raises(FlywheelError, match="no experiment is running"):
        ab.stop_experiment(cfg, db, "nothing to stop", "lead")
    exp = ab.start_experiment(cfg, db, "v0002")
    with pytest.raises(FlywheelError, match="--reason"):
        ab.stop_experiment(cfg, db, "  ", "lead")
    assert experiment.get(db) is not None  # a refused stop changes nothing

    said = ab.stop_experiment(cfg, db, "the night ended undecided", "cli:lead")

    assert "v0002 rolled back" in said
    assert experiment.get(db) is None and experiment.get(db, exp.experiment_id).status == "rolled_back"
    last = experiment.decisions(db, exp.experiment_id)[-1]
    assert last["decision"] == "rollback" and last["reason"] == "stopped by cli:lead: the night ended undecided"
    assert "arms" in last["numbers"]
    assert registry.get(db, "v0002")["status"] == "rolled_back" and registry.live(db)["version"] == "v0001"
    assert Routing.read(tmp_path / "routing.json").split == (("v0001", 1.0),)
    newest = audit.entries(db, limit=1)[0]
    assert (newest["actor"], newest["action"], newest["subject"]) == ("cli:lead", "rollback", exp.experiment_id)
    assert "the night ended undecided" in newest["details"]["reason"]
