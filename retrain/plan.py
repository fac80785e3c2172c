"""What one retrain run will do, decided before anything trains: the parent to start from, the earlier
snapshots to replay, whether there is enough new data, and the typed `Job` the worker subprocess reads.

The parent is the live adapter unless it is tainted (it holds a forgotten user's data: start over from the
base model). A run needs `retrain.min_new_samples` approved samples that no earlier run trained on, whether
or not that run passed its gates. Plain decisions on registry rows; `infra.control` carries them out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from retrain import registry
from retrain.config import RetrainConfig


@dataclass(frozen=True)
class Job:
    """Everything the worker needs (`python -m retrain.worker JOB.json`); it opens no database."""

    version: str
    base_model: str  # the configured id, for the manifest
    base_path: str  # its local folder
    base_hash: str
    snapshot_id: str
    snapshot_hash: str
    snapshot_dir: str
    snapshot_train_rows: int
    earlier_snapshots: tuple[str, ...]  # snapshot folders of the parent's lineage, replayed
    replay_exclude: tuple[str, ...]  # their sample ids that users have since rejected: never replayed
    learned: tuple[str, ...]  # what the parent's lineage trained on: the run trains on the rest plus replay
    parent_version: str | None
    parent_path: str | None
    out_dir: str
    config: RetrainConfig

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "config": self.config.model_dump(mode="json")}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        return cls(
            **{
                **data,
                "earlier_snapshots": tuple(data["earlier_snapshots"]),
                "replay_exclude": tuple(data.get("replay_exclude", ())),
                "learned": tuple(data.get("learned", ())),
                "config": RetrainConfig.model_validate(data["config"]),
            }
        )


@dataclass(frozen=True)
class Start:
    """Where a run starts: the incumbent it must beat (None: base serves) and the parent it trains from."""

    incumbent: dict | None
    parent: dict | None
    lineage: list[dict]  # the parent and its ancestors, newest first


def start(con) -> Start:
    live = registry.live(con)
    incumbent = registry.get(con, live["version"]) if live else None
    parent = incumbent if incumbent and not incumbent["tainted"] else None
    return Start(incumbent, parent, registry.ancestors(con, parent["version"]) if parent else [])


def new_samples(con, train_ids: list[str]) -> list[str]:
    """The snapshot's training samples that no earlier run trained on."""
    seen = registry.trained_sample_ids(con)
    return [s for s in train_ids if s not in seen]


def too_few(new: int, cfg: RetrainConfig) -> str | None:
    """Why a run with `new` new samples is skipped, or None when it may run."""
    if new < cfg.min_new_samples:
        return f"{new} new approved samples, fewer than retrain.min_new_samples={cfg.min_new_samples}"
    return None


def job(
    version: str,
    cfg: RetrainConfig,
    *,
    base_model: str,
    base_path: Path,
    base_hash: str,
    snapshot,
    earlier: list[str],
    superseded: list[str],
    begin: Start,
    out_dir: Path,
) -> Job:
    """The worker's job for `snapshot` (a curation Snapshot: id, content hash, folder, manifest)."""
    return Job(
        version=version,
        base_model=base_model,
        base_path=str(base_path),
        base_hash=base_hash,
        snapshot_id=snapshot.snapshot_id,
        snapshot_hash=snapshot.content_hash,
        snapshot_dir=str(snapshot.path),
        snapshot_train_rows=len(snapshot.manifest["sample_ids"]["train"]),
        earlier_snapshots=tuple(earlier),
        replay_exclude=tuple(superseded),
        learned=tuple(sorted(registry.learned_sample_ids(begin.lineage))),
        parent_version=begin.parent["version"] if begin.parent else None,
        parent_path=begin.parent["path"] if begin.parent else None,
        out_dir=str(out_dir),
        config=cfg,
    )
