"""The `curation` config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CurationConfig(Section):
    review_policy: Literal["required", "sample", "auto"] = Field(
        "required", description="Who approves samples: a reviewer, a sampled share, or nobody (demos)."
    )
    max_user_share: float = Field(
        0.02, gt=0, le=1, description="Most of a snapshot that one user's samples may make up."
    )
    seed: int = Field(0, description="Seed for splits and sampling; same data + seed = same snapshot.")
