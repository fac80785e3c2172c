"""Retrain as the control process runs it: curate -> snapshot -> worker subprocess -> gates -> registry,
with injected failures (NaN loss, kill -9) that must leave the incumbent alone."""

import json
import threading

import pytest
import torch

from infra import control, schedule
from infra.db import open_store
from infra.processes import RetrainLock
from retrain import registry
from tests.conftest import flywheel
from tests.helpers.events import more_ratings, store
from tests.helpers.retrain import config, digest


@pytest.mark.slow
def test_retrain_now_from_the_cli_registers_a_gated_candidate(tiny_lm, populated, tmp_path):
    import tomli_w

    from infra.config import to_toml_dict

    cfg_file = tmp_path / "flywheel.toml"  # the test's config, as a user would write it
    cfg_file.write_text(tomli_w.dumps(to_toml_dict(config(tiny_lm, populated))))
    out = flywheel("-c", str(cfg_file), "retrain", "--now", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "retrain v0001: candidate" in out.stdout and "eval desirable loss" in out.stdout
    assert "step 1/" in out.stderr  # progress with loss and tokens/s
    adapter = populated / "adapters" / "v0001"
    assert {"adapter_config.json", "adapter_model.safetensors", "flywheel-adapter.json"} <= {
        p.name for p in adapter.iterdir()
    }
    import json

    manifest = json.loads((adapter / "flywheel-adapter.json").read_text())
    assert manifest["parent"] is None and manifest["snapshot_id"].startswith("snap-") and manifest["base_hash"]
    assert manifest["sample_ids"] and manifest["metrics"]["tokens_per_s"] > 0 and manifest["seed"] == 0

    again = flywheel("-c", str(cfg_file), "retrain", "--now")
    assert again.returncode == 0 and "skipped: 0 new approved samples" in again.stdout
    listed = flywheel("-c", str(cfg_file), "adapters", "list")
    assert "v0001" in listed.stdout and "candidate" in listed.stdout
    history = flywheel("-c", str(cfg_file), "adapters", "history")
    assert "v0001  candidate" in history.stdout
    at = flywheel("-c", str(cfg_file), "adapters", "history", "--at", "2020-01-01T00:00")
    assert at.stdout.strip().endswith(": base")
    bad = flywheel("-c", str(cfg_file), "adapters", "history", "--at", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


@pytest.mark.slow
def test_failed_runs_leave_the_incumbent_and_the_registry_alone(tiny_lm, populated, scrub_pool):
    con = open_store(populated / "flywheel.duckdb")
    try:
        first = control.retrain(config(tiny_lm, populated), con)
        assert first.status == "candidate", first.reason
        registry.set_status(con, "v0001", "live", "promoted by hand in this test")
        incumbent = digest(populated / "adapters" / "v0001")
        store(con, more_ratings(range(60, 80)), scrub_pool.scrub)

        nan = control.retrain(config(tiny_lm, populated, learning_rate=1e30, epochs=20), con)
        assert nan.status == "failed" and "loss is" in nan.reason, nan.reason
        killed_at = {}

        def kill_soon(proc):
            killed_at["pid"] = proc.pid
            threading.Timer(1.0, proc.kill).start()

        killed = control.retrain(config(tiny_lm, populated), con, on_worker=kill_soon)
        assert killed.status == "failed" and "SIGKILL" in killed.reason and killed_at
        assert registry.live(con)["version"] == "v0001" and digest(populated / "adapters" / "v0001") == incumbent
        rows = dict((v, (s, r)) for v, _, s, _, _, _, r in registry.listing(con))
        assert rows["v0002"][0] == "failed" and rows["v0003"][0] == "failed"
        assert not (populated / "adapters" / "v0002").exists() and not list((populated / "adapters").glob(".staging*"))

        # The next run trains to the end, from the incumbent; whether the tiny model's new adapter also beats
        # the incumbent on the offline gate depends on the random texts above, so either verdict is a success.
        after = control.retrain(config(tiny_lm, populated), con)
        assert after.status in ("candidate", "rejected"), after.reason
        assert (populated / "adapters" / after.version / "adapter_model.safetensors").exists()
        assert registry.get(con, after.version)["parent"] == "v0001"
        assert registry.live(con)["version"] == "v0001"
        assert after.version == "v0004"  # versions are never reused

        # Incremental: v0004 trained on what v0001 had not learned, plus the replay share (20%) of what it had.
        def trained(version):
            return json.loads((populated / "adapters" / version / "flywheel-adapter.json").read_text())

        learned, now = set(trained("v0001")["sample_ids"]), trained("v0004")
        new, replayed = set(now["sample_ids"]) - learned, set(now["sample_ids"]) & learned
        assert len(new) >= 10 and len(replayed) == now["metrics"]["replayed"] == round(len(new) * 0.2 / 0.8)
        assert len(now["sample_ids"]) < len(learned) + len(new)  # not everything again
    finally:
        con.close()


def test_stopping_the_service_kills_a_run_in_flight_and_records_it(tiny_lm, populated):
    con = open_store(populated / "flywheel.duckdb")
    try:
        ctl = control.Control(config(tiny_lm, populated), con)  # what `flywheel up` stops on SIGTERM
        stopped = ctl.retrain(on_worker=lambda proc: threading.Timer(1.0, ctl.stop).start())
        assert stopped.status == "failed" and stopped.reason.startswith("stopped:"), stopped.reason
        assert registry.get(con, stopped.version)["status"] == "failed" and registry.live(con) is None
        assert not list((populated / "adapters").glob("*/adapter_model.safetensors"))
    finally:
        con.close()


@pytest.mark.slow
def test_a_run_trains_at_most_max_new_samples_and_the_rest_stay_new(tiny_lm, populated):
    """A night's budget: `retrain.max_new_samples` new samples (a seeded choice); what a run did not train on
    is new to the next (the manifests say what was trained)."""
    from retrain import plan

    cfg = config(tiny_lm, populated, max_new_samples=12, epochs=1)
    con = open_store(populated / "flywheel.duckdb")
    try:
        first = control.retrain(cfg, con)
        assert first.status == "candidate", first.reason
        assert first.metrics["train"]["samples"] == 12
        assert first.metrics["train"]["replayed"] == 0  # base serves: no lineage to replay
        manifest = populated / "snapshots" / first.snapshot_id / "manifest.json"
        train = json.loads(manifest.read_text())["sample_ids"]["train"]
        assert len(train) > 12 and len(plan.new_samples(con, train)) == len(train) - 12
        assert plan.too_few(len(train) - 12, cfg.retrain) is None  # the next night runs on what is left
    finally:
        con.close()


@pytest.mark.slow
def test_a_run_from_the_live_adapter_takes_smaller_steps(tiny_lm, populated, tmp_path, scrub_pool):
    """retrain.incremental_lr_scale: a run from base trains at learning_rate; a run from the live adapter at
    learning_rate times the scale, which is what training at the product itself gives (the same adapter)."""
    import shutil

    from safetensors.torch import load_file

    con = open_store(populated / "flywheel.duckdb")
    try:
        first = control.retrain(config(tiny_lm, populated, incremental_lr_scale=0.25), con)
        assert first.status == "candidate", first.reason
        assert first.metrics["train"]["learning_rate"] == 0.03  # from base: the full rate
        registry.set_status(con, first.version, "live", "promoted by hand in this test")
        store(con, more_ratings(range(60, 80)), scrub_pool.scrub)
    finally:
        con.close()
    twin = tmp_path / "twin"
    shutil.copytree(populated, twin)
    adapters = {}
    for data, lr, scale in ((populated, 0.04, 0.25), (twin, 0.01, 1.0)):
        con = open_store(data / "flywheel.duckdb")
        try:
            out = control.retrain(config(tiny_lm, data, learning_rate=lr, incremental_lr_scale=scale), con)
            assert out.status in ("candidate", "rejected"), out.reason  # trained to the end; the gate may say no
            assert registry.get(con, out.version)["parent"] == first.version
            assert out.metrics["train"]["learning_rate"] == pytest.approx(0.01)
        finally:
            con.close()
        adapters[scale] = load_file(data / "adapters" / out.version / "adapter_model.safetensors")
    before = load_file(populated / "adapters" / first.version / "adapter_model.safetensors")
    for name, weight in adapters[1.0].items():
        torch.testing.assert_close(adapters[0.25][name], weight, rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(before[n], w) for n, w in adapters[1.0].items())  # it trained


@pytest.mark.slow
def test_two_training_processes_under_torchrun_make_the_adapter_of_one(tiny_lm, populated, tmp_path, scrub_pool):
    """retrain.gpus=2 on a machine without CUDA: two gloo processes under torchrun, each a share of every
    step, gradients summed. Same data, global batch and seed as one process: the same adapter (fp32, within
    1e-5). A failure in the group surfaces as the run's reason and leaves nothing behind."""
    import shutil

    from safetensors.torch import load_file

    twin = tmp_path / "twin"
    shutil.copytree(populated, twin)
    adapters = {}
    for gpus, data in ((1, populated), (2, twin)):
        con = open_store(data / "flywheel.duckdb")
        try:
            out = control.retrain(config(tiny_lm, data, gpus=gpus, epochs=2), con)
            assert out.status == "candidate", out.reason
        finally:
            con.close()
        adapters[gpus] = load_file(data / "adapters" / out.version / "adapter_model.safetensors")
        manifest = json.loads((data / "adapters" / out.version / "flywheel-adapter.json").read_text())
        assert manifest["config"]["gpus"] == gpus and manifest["metrics"]["steps"] > 1
    assert adapters[1].keys() == adapters[2].keys()
    for name, weight in adapters[1].items():
        torch.testing.assert_close(adapters[2][name], weight, rtol=0, atol=1e-5, msg=name)
    assert any(w.abs().max() > 1e-3 for n, w in adapters[1].items() if "lora_B" in n)  # it trained

    store_con = open_store(twin / "flywheel.duckdb")
    try:
        store(store_con, more_ratings(range(60, 80)), scrub_pool.scrub)
        nan = control.retrain(config(tiny_lm, twin, gpus=2, learning_rate=1e30, epochs=20), store_con)
        assert nan.status == "failed" and "loss is" in nan.reason, nan.reason
        assert not list((twin / "adapters").glob(".staging*"))
    finally:
        store_con.close()


def test_one_run_at_a_time_and_too_little_data_is_skipped_with_the_reason(tiny_lm, populated, caplog):
    cfg = config(tiny_lm, populated, min_new_samples=10_000)
    con = open_store(populated / "flywheel.duckdb")
    try:
        holder = RetrainLock(populated)
        assert holder.acquire()
        busy = control.retrain(cfg, con)
        assert busy.status == "skipped" and "another retrain is running" in busy.reason
        holder.release()
        with caplog.at_level("INFO", logger="flywheel.control"):
            few = control.retrain(cfg, con)
        assert few.status == "skipped" and "fewer than retrain.min_new_samples=10000" in few.reason
        assert "retrain skipped" in caplog.text
        assert registry.listing(con) == []
    finally:
        con.close()


def test_the_schedule_is_persistent_single_and_coalescing(tiny_lm, tmp_path):
    cfg = config(tiny_lm, tmp_path, misfire_grace_s=600)
    scheduler, job = schedule.start_scheduler(cfg)
    try:
        assert job.max_instances == 1 and job.coalesce and job.misfire_grace_time == 600
        first_run = job.next_run_time
        assert first_run.hour == 2 and first_run.minute == 0
    finally:
        scheduler.shutdown(wait=False)
    assert (tmp_path / "scheduler.sqlite").exists()
    scheduler, job = schedule.start_scheduler(cfg)  # a restart finds the same job and its next run
    try:
        assert len(scheduler.get_jobs()) == 1 and job.next_run_time == first_run
    finally:
        scheduler.shutdown(wait=False)
    scheduler, job = schedule.start_scheduler(config(tiny_lm, tmp_path, schedule="30 3 * * *"))
    try:
        assert len(scheduler.get_jobs()) == 1 and (job.next_run_time.hour, job.next_run_time.minute) == (3, 30)
    finally:
        scheduler.shutdown(wait=False)
