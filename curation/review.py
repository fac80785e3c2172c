"""The review queue: what waits for a compliance reviewer, and their decisions (audited)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from curation import audit

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

# What counts as blank in a reason: Python's whitespace (str.isspace, which includes \x1c-\x1f and \x85) and
# the BOM: the same reasons are blank under the API schema's pattern (serving.pages, ECMA-262's \s plus those).
BLANK = "".join(chr(c) for c in range(0x3001) if chr(c).isspace()) + "\ufeff"


class ReviewError(ValueError):
    """A decision that cannot be recorded (unknown samples, a rejection without a reason)."""


class UnknownSamples(ReviewError):
    """Some of the sample ids do not exist (the API answers 404)."""


def pending(con: DuckDBPyConnection, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Kept samples waiting for a decision, oldest first, with the PII types found in their chat."""
    rows = con.execute(
        """
        SELECT s.sample_id, s.label, s.source, s.prompt, s.answer, s.scores, f.rating,
               (SELECT list(DISTINCT p.entity_type ORDER BY p.entity_type) FROM pii_findings p
                WHERE p.event_id = s.chat_event_id OR p.event_id = f.event_id) AS pii
        FROM samples s
        LEFT JOIN latest_feedback f ON f.response_id = s.response_id AND f.user_id = s.user_id
        WHERE s.status = 'pending' AND s.keep
        ORDER BY s.created_at, s.sample_id
        LIMIT ? OFFSET ?
    """,
        [limit, offset],
    ).fetchall()
    return [
        {
            "sample_id": r[0],
            "label": r[1],
            "source": r[2],
            "prompt": r[3],
            "answer": r[4],
            "scores": json.loads(r[5] or "{}"),
            "rating": r[6],
            "pii": list(r[7] or []),
        }
        for r in rows
    ]


def pending_ids(con: DuckDBPyConnection) -> list[str]:
    """Every sample waiting for a reviewer (what `--all-pending` acts on)."""
    return [r[0] for r in con.execute("SELECT sample_id FROM samples WHERE status = 'pending' AND keep").fetchall()]


def counts(con: DuckDBPyConnection) -> dict[str, int]:
    rows = con.execute("SELECT CASE WHEN keep THEN status ELSE 'filtered' END, count(*) FROM samples GROUP BY 1")
    return {"pending": 0, "approved": 0, "rejected": 0, "filtered": 0, **dict(rows.fetchall())}


def filter_stats(con: DuckDBPyConnection) -> dict[str, int]:
    """How many samples each filter dropped (the first that applied), and how many were kept."""
    rows = con.execute(
        "SELECT coalesce(split_part(reason, ':', 1), 'kept'), count(*) FROM samples GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    return dict(rows)


def decide(
    con: DuckDBPyConnection,
    sample_ids: list[str],
    decision: str,
    reviewer: str,
    reason: str | None = None,
    policy: str = "required",
) -> int:
    """Approve or reject samples, one or a batch; one transaction and one audit entry. Returns how many."""
    if decision not in ("approve", "reject"):
        raise ReviewError(f"decision must be approve or reject, not {decision!r}")
    if decision == "reject" and not (reason or "").strip(BLANK):
        raise ReviewError("a rejection needs a reason")
    if not reviewer.strip():
        raise ReviewError("a decision needs the reviewer's identity")
    ids = sorted(set(sample_ids))
    if not ids:
        raise ReviewError("no sample ids given")
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_ids", pa.table({"sample_id": ids}))
        known = {
            r[0]
            for r in con.execute(
                "SELECT sample_id FROM samples WHERE sample_id IN (SELECT sample_id FROM _ids)"
            ).fetchall()
        }
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise UnknownSamples(f"unknown sample ids: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        status = "approved" if decision == "approve" else "rejected"
        con.execute("UPDATE samples SET status = ? WHERE sample_id IN (SELECT sample_id FROM _ids)", [status])
        con.execute(
            "INSERT INTO reviews (sample_id, decision, reason, reviewer, policy) "
            "SELECT sample_id, ?, ?, ?, ? FROM _ids",
            [decision, reason, reviewer, policy],
        )
        audit.append(
            con,
            reviewer,
            decision,
            ids[0] if len(ids) == 1 else f"{len(ids)} samples",
            {"sample_ids": ids, "reason": reason, "policy": policy},
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_ids")
    return len(ids)
