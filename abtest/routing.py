"""The live split: one type, built here from the registry and the running experiment, written by the control
process as `routing.json` and parsed by serving, which assigns each user with it.

`parse` is the one check of the file's contract (shares >= 0 that add up to 1, an adapter folder for every
variant but base); `to_json` is what `parse` reads back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abtest.assignment import assign
from ingest.contracts import BASE


@dataclass(frozen=True)
class Routing:
    experiment_id: str | None = None
    salt: str = "flywheel"
    split: tuple[tuple[str, float], ...] = ((BASE, 1.0),)
    adapters: dict[str, str] = field(default_factory=dict)  # version -> folder

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Routing:
        """A Routing from `routing.json`'s content; ValueError names what is wrong."""
        split = tuple[Any, ...]((str(v), float(s)) for v, s in data.get("split", [[BASE, 1.0]]))
        if not split or abs(sum(s for _, s in split) - 1) > 1e-6 or any(s < 0 for _, s in split):
            raise ValueError(f"split shares must be >= 0 and add up to 1: {split}")
        adapters = {str(k): str(v) for k, v in data.get("adapters", {}).items()}
        missing = [v for v, _ in split if v != BASE and v not in adapters]
        if missing:
            raise ValueError(f"no adapter folder for {missing}")
        return cls(data.get("experiment_id"), str(data.get("salt", "flywheel")), split, adapters)

    @classmethod
    def read(cls, path: Path) -> Routing:
        """The Routing a `routing.json` holds; ValueError when it is not JSON or breaks the contract."""
        return cls.parse(json.loads(Path(path).read_text()))

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "salt": self.salt,
            "split": [[v, s] for v, s in self.split],
            "adapters": dict[str, Any](self.adapters),
        }

    def assign(self, user_id: str) -> str:
        return assign(user_id, self.salt, list(self.split))

    @classmethod
    def live(cls, version: str, paths: dict[str, str]) -> Routing:
        """Everyone on `version` (no experiment)."""
        return cls.parse({"split": [[version, 1.0]], "adapters": {version: paths[version]} if version != BASE else {}})

    @classmethod
    def experiment(
        cls, experiment_id: str, salt: str, challenger: str, incumbent: str, share: float, paths: dict[str, str]
    ) -> Routing:
        """The challenger's share of users, the rest on the incumbent."""
        split = [[challenger, share], [incumbent, round(1 - share, 10)]]
        adapters = {v: paths[v] for v in (challenger, incumbent) if v != BASE}
        return cls.parse({"experiment_id": experiment_id, "salt": salt, "split": split, "adapters": adapters})
