"""Snapshots: the approved samples frozen as Parquet (train and eval, split by user) plus a manifest.

The snapshot id is derived from the content hash, so the same data and seed give the same files, hash
and id, and building it again is a no-op. Files are written to a temporary folder and renamed into place,
so a reader never sees half a snapshot. Loadable with `datasets.load_dataset("parquet", data_files=...)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation import audit, filters, review
from curation.config import CurationConfig
from curation.curate import MESSAGES

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

log = logging.getLogger("flywheel.curation")

SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("user_key", pa.string()),  # a hash of the user id: enough to keep users apart, not to find them
        ("label", pa.bool_()),  # True: desirable (TRL's KTO convention)
        ("source", pa.string()),  # rating | correction | unrated
        ("prompt", MESSAGES),  # the conversation up to the answer
        ("completion", MESSAGES),  # one assistant message
    ]
)

# Approved samples of chats whose user was not forgotten since (`remembered_chats`, migration 0005).
APPROVED = """
SELECT s.sample_id, s.user_id, s.label, s.source, s.prompt, s.answer
FROM samples s JOIN remembered_chats c ON c.event_id = s.chat_event_id
WHERE s.status = 'approved' AND s.keep
ORDER BY s.sample_id
"""


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    content_hash: str
    path: Path
    manifest: dict[str, Any]
    created: bool  # False when an identical snapshot already existed

    def data_files(self) -> dict[str, str]:
        return {"train": str(self.path / "train.parquet"), "eval": str(self.path / "eval.parquet")}


def user_key(user_id: str) -> str:
    return hashlib.sha256(f"flywheel-user:{user_id}".encode()).hexdigest()[:16]


def in_eval(user_id: str, cfg: CurationConfig) -> bool:
    return filters.unit(f"{cfg.seed}:split:{user_id}") < cfg.eval_share


def _table(rows: list[tuple[Any, ...]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "sample_id": sid,
                "user_key": user_key(user),
                "label": label == "desirable",
                "source": source,
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": answer}],
            }
            for sid, user, label, source, prompt, answer in rows
        ],
        schema=SCHEMA,
    )


def _write(table: pa.Table, path: Path) -> None:
    # Fixed writer settings: same rows, same bytes (no timestamps are written into Parquet metadata).
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=3,
        row_group_size=64 * 1024,
        write_statistics=False,
        store_schema=True,
    )


def _split(
    rows: list[tuple[Any, ...]], cfg: CurationConfig, trained: frozenset[str] = frozenset()
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(train, eval): whole users go to eval (curation.eval_share), so eval holds only users never trained on.
    A user's place in the split order does not change from one snapshot to the next, and a user some earlier
    run trained on (a sample id in `trained`) never goes to eval: a user's side only ever moves to train.
    A few heavy users can hold most of the rows (40 users at 25% put 198 of 353 rows in eval, leaving training
    too little), so eval keeps the drawn users in split order while they hold at most twice eval_share of the
    rows (at least its first user); the rest train. Small sets can also draw badly (4 users, none with a
    desirable answer: the offline gate then has nothing to judge by), so eval then takes the next user in split
    order that has one. Train always keeps at least one user."""
    users = sorted({r[1] for r in rows}, key=lambda u: filters.unit(f"{cfg.seed}:split:{u}"))
    seen = {r[1] for r in rows if r[0] in trained}
    free = [u for u in users if u not in seen]
    if cfg.eval_share <= 0 or len(users) < 2 or not free:
        return rows, []
    per_user = Counter(r[1] for r in rows)
    drawn = [u for u in free if in_eval(u, cfg)] or free[:1]
    limit, held = 2 * cfg.eval_share * len(rows), 0
    chosen: list[str] = []
    for user in drawn:  # the longest prefix within the cap
        if chosen and held + per_user[user] > limit:
            break
        chosen.append(user)
        held += per_user[user]
    good = {r[1] for r in rows if r[2] == "desirable"}
    if good and not good & set(chosen):
        chosen += [u for u in free if u in good and u not in chosen][:1]
    if len(chosen) == len(users):  # everyone drew eval: keep the first, train on the rest
        chosen = chosen[:1]
    side = set(chosen)
    return [r for r in rows if r[1] not in side], [r for r in rows if r[1] in side]


def _freeze(
    root: Path, train_rows: list[tuple[Any, ...]], eval_rows: list[tuple[Any, ...]], facts: dict[str, Any]
) -> tuple[Path, bool]:
    """Write the Parquet files and the manifest into a staging folder, then rename it to its content's id:
    (the folder, whether it is new). An identical snapshot that exists already is kept as it is."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write(_table(train_rows), staging / "train.parquet")
        _write(_table(eval_rows), staging / "eval.parquet")
        digest = hashlib.sha256()
        for name in ("train.parquet", "eval.parquet"):
            digest.update((staging / name).read_bytes())
        content_hash = digest.hexdigest()
        snapshot_id = f"snap-{content_hash[:12]}"
        manifest = {
            "snapshot_id": snapshot_id,
            "content_hash": content_hash,
            "files": {"train": "train.parquet", "eval": "eval.parquet"},
            **facts,
            "sample_ids": {"train": [r[0] for r in train_rows], "eval": [r[0] for r in eval_rows]},
        }
        final = root / snapshot_id
        if final.exists():
            shutil.rmtree(staging)
            return final, False
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.rename(staging, final)
        return final, True
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _record(con: DuckDBPyConnection, final: Path, manifest: dict[str, Any], actor: str) -> None:
    con.execute("BEGIN TRANSACTION")
    try:
        inserted = con.execute(
            "INSERT INTO snapshots (snapshot_id, content_hash, path, manifest) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            [manifest["snapshot_id"], manifest["content_hash"], str(final), json.dumps(manifest)],
        ).fetchall()
        if inserted:
            audit.append(
                con,
                actor,
                "snapshot",
                manifest["snapshot_id"],
                {"content_hash": manifest["content_hash"], **manifest["counts"]},
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def build(con: DuckDBPyConnection, cfg: CurationConfig, root: Path, actor: str = "system") -> Snapshot | None:
    """Freeze the approved samples; None when there are none."""
    rows = con.execute(APPROVED).fetchall()
    if not rows:
        return None
    users = [r[1] for r in rows]
    order = filters.cap_order([r[3] for r in rows], [r[0] for r in rows], cfg.seed)
    cap, kept = filters.user_cap(users, cfg.max_user_share, order)
    rows = [r for i, r in enumerate(rows) if i in kept]
    capped_users = len(rows)
    order = filters.cap_order([r[3] for r in rows], [r[0] for r in rows], cfg.seed)
    per_answer, kept = filters.answer_cap([r[5] for r in rows], cfg.max_answer_share, order)
    rows = [r for i, r in enumerate(rows) if i in kept]
    if not rows:
        raise ValueError(
            f"no snapshot: {len(set(users))} users cannot meet the per-user cap of "
            f"{cfg.max_user_share:.1%} (curation.max_user_share needs at least {1 / cfg.max_user_share:.0f} users)"
        )
    from retrain import registry  # what earlier runs trained on (their manifests): those users stay in train

    train_rows, eval_rows = _split(rows, cfg, frozenset(registry.trained_sample_ids(con)))
    labels = [r[2] for r in rows]
    facts = {
        "counts": {
            "train": len(train_rows),
            "eval": len(eval_rows),
            "desirable": labels.count("desirable"),
            "undesirable": labels.count("undesirable"),
            "users": len({r[1] for r in rows}),
            "approved": len(users),
            "over_user_cap": len(users) - capped_users,
            "over_answer_cap": capped_users - len(rows),
        },
        "per_user_cap": cap,
        "per_answer_cap": per_answer,
        "filter_stats": review.filter_stats(con),
        "config": cfg.model_dump(mode="json"),
        "seed": cfg.seed,
    }
    final, created = _freeze(Path(root), train_rows, eval_rows, facts)
    manifest = json.loads((final / "manifest.json").read_text())
    _record(con, final, manifest, actor)
    log.info(
        "snapshot %s: %d train, %d eval samples (%s)",
        manifest["snapshot_id"],
        len(train_rows),
        len(eval_rows),
        "new" if created else "unchanged",
    )
    return Snapshot(manifest["snapshot_id"], manifest["content_hash"], final, manifest, created)


def replayable(con: DuckDBPyConnection, snapshot_ids: list[str | None], current: Path) -> list[str]:
    """The folders of `snapshot_ids` that still hold their training data (none purged by a forget), in order,
    leaving out `current`: what an incremental run replays."""
    out = []
    for snapshot_id in snapshot_ids:
        row = con.execute(
            "SELECT path FROM snapshots WHERE snapshot_id = ? AND purged_at IS NULL", [snapshot_id]
        ).fetchone()
        if row and row[0] != str(current) and Path(row[0], "train.parquet").exists():
            out.append(row[0])
    return out
