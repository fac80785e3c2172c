"""The `abtest` config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AbtestConfig(Section):
    challenger_share: float = Field(0.1, gt=0, lt=1, description="Canary traffic share of a challenger.")
    alpha: float = Field(0.05, gt=0, lt=1, description="False-promotion rate under continuous peeking.")
    srm_p: float = Field(0.001, gt=0, lt=1, description="Sample-ratio mismatch p below which we stop.")
    min_users_per_arm: int = Field(50, ge=1, description="No decision before this many users per arm.")
