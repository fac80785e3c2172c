"""The adapter registry: versions, statuses, and which version served when."""

from datetime import UTC, datetime, timedelta

from retrain import registry


def test_registry_says_which_version_served_when(db):
    def at(minutes):
        return datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minutes)

    for v in ("v0001", "v0002"):
        registry.register(
            db,
            v,
            status="candidate",
            parent=None,
            base_model="b",
            base_hash=None,
            snapshot_id=None,
            path=None,
            metrics={},
        )
    # A taint (a forget found v0001 in a user's lineage) flags v0001 but does not stop it serving.
    events = [
        (at(10), "v0001", "live"),
        (at(12), "v0001", registry.TAINTED),
        (at(20), "v0002", "canary"),
        (at(30), "v0001", "retired"),
        (at(30), "v0002", "live"),
        (at(40), "v0002", "rolled_back"),
    ]
    db.execute("DELETE FROM adapter_events")
    db.executemany("INSERT INTO adapter_events (changed_at, version, status) VALUES (?, ?, ?)", events)
    assert [registry.live_at(db, at(m)) for m in (5, 15, 25, 35, 45)] == ["base", "v0001", "v0001", "v0002", "base"]
    assert registry.next_version(db) == "v0003"
