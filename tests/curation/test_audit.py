"""The audit log's chain, anchored outside the database: truncation and a re-chained rewrite are found."""

import json

from curation import audit
from infra import keys
from infra.db import open_store
from tests.conftest import flywheel


def logged(data, n=3):
    con = open_store(data / "flywheel.duckdb")
    for i in range(n):
        audit.append(con, "rita", "approve", f"smp-{i}", {"n": i})
    keys.write_anchor(con, data)  # what the service and every CLI command do after writing
    return con


def rechain(con, start: int) -> None:
    """What an attacker with the database (not the secret) can do: recompute every hash from `start` on."""
    rows = con.execute(
        "SELECT seq, epoch_us(logged_at), actor, action, subject, details FROM audit_log WHERE seq >= ? ORDER BY seq",
        [start],
    ).fetchall()
    prev = con.execute("SELECT hash FROM audit_log WHERE seq = ?", [start - 1]).fetchone()
    prev = prev[0] if prev else audit.GENESIS
    for seq, us, actor, action, subject, details in rows:
        digest = audit._digest(prev, seq, us, actor, action, subject, json.loads(details))
        con.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", [prev, digest, seq])
        prev = digest


def verify(data, *extra):
    return flywheel("audit", "verify", *extra, env={"FLYWHEEL_DATA_DIR": str(data)})


def test_truncation_and_a_rechained_rewrite_are_found(tmp_path):
    for attack in ("delete the newest", "rewrite entry 1 and re-chain", "forge the anchor"):
        data = tmp_path / attack.replace(" ", "-")
        data.mkdir()
        logged(data).close()
        head = flywheel("audit", "head", env={"FLYWHEEL_DATA_DIR": str(data)}).stdout.strip()
        assert head.startswith("3:") and "anchored at entry 3" in verify(data).stdout
        con = open_store(data / "flywheel.duckdb")
        if attack == "delete the newest":
            con.execute("DELETE FROM audit_log WHERE seq = 3")  # the chain of 1..2 is still consistent
            expected = "missing: the log was truncated"
        elif attack == "rewrite entry 1 and re-chain":
            con.execute("""UPDATE audit_log SET details = '{"n": 99}' WHERE seq = 1""")
            rechain(con, 1)
            expected = "differs from the anchor's hash"
        else:
            con.execute("""UPDATE audit_log SET details = '{"n": 99}' WHERE seq = 1""")
            rechain(con, 1)
            new_head = con.execute("SELECT hash FROM audit_log WHERE seq = 3").fetchone()[0]
            (data / keys.ANCHOR_FILE).write_text(json.dumps({"seq": 3, "hash": new_head, "mac": "0" * 64}))
            expected = "signature does not verify"
        con.close()
        out = verify(data)
        assert out.returncode == 1 and expected in out.stderr, (attack, out.stderr)
        kept = verify(data, "--head", head)  # a head the reviewer kept elsewhere catches it too
        assert kept.returncode == 1, attack


def test_a_log_without_its_anchor_is_not_called_intact(tmp_path):
    logged(tmp_path).close()
    (tmp_path / keys.ANCHOR_FILE).unlink()
    out = verify(tmp_path)
    assert out.returncode == 1 and "audit.anchor is missing" in out.stderr
