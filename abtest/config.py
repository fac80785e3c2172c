"""The `abtest` config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The smallest arm at which the always-valid test keeps its promise (false decisions + 2 Monte Carlo errors
# <= alpha = 0.05 under peeking after every new user, at a 10% canary and at 50/50, for up-rates from 3% to
# 97% and abtest.tau from 0.05 to 0.3): found by the A/A simulation in tests/abtest/test_stats.py. Worst
# case: 4.3% at 11 users, 4.4% at 10 (too close: the Monte Carlo error is 0.34%), 14.5% at 2.
MIN_USERS_PER_ARM = 11


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AbtestConfig(Section):
    ramp: list[float] = Field(
        [0.1, 0.5],
        min_length=1,
        description="Challenger traffic share per stage: the next stage starts once the guardrails hold "
        "with the minimum sample.",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="False-decision rate under continuous peeking (mSPRT).")
    tau: float = Field(0.05, gt=0, description="mSPRT mixture scale: the lift (in up-rate) the test is tuned to.")
    srm_p: float = Field(0.001, gt=0, lt=1, description="Sample-ratio mismatch p below which we roll back.")
    min_users_per_arm: int = Field(
        50,
        description=f"No decision before this many rating users per arm (at least {MIN_USERS_PER_ARM}: below "
        "that the test makes more false decisions than alpha allows).",
    )
    min_duration_s: float = Field(3600, ge=0, description="No decision before the experiment ran this long.")
    max_duration_s: float = Field(14 * 86400, gt=0, description="Inconclusive after this long: keep the incumbent.")
    latency_margin: float = Field(
        0.25,
        ge=0,
        description="Guardrail: challenger latency (per answer token) at most this much above the incumbent's p95 "
        "of the same window "
        "(relative); a breach is more than 5% of challenger answers over it, significant at alpha.",
    )
    latency_window_s: float = Field(
        60, gt=0, description="The latency guardrail compares the arms within windows this long (load moves both arms)."
    )
    rating_rate_margin: float = Field(
        0.10, ge=0, description="Guardrail: share of answers rated at most this much below the incumbent's (absolute)."
    )
    empty_answer_margin: float = Field(
        0.02, ge=0, description="Guardrail: share of empty answers at most this much above the incumbent's (absolute)."
    )
    evaluate_every_s: float = Field(300, gt=0, description="How often `flywheel up` evaluates experiments.")
    auto_start: bool = Field(True, description="`flywheel up` starts an experiment for a new candidate.")

    @field_validator("min_users_per_arm")
    @classmethod
    def _enough_users(cls, value: int) -> int:
        if value < MIN_USERS_PER_ARM:
            raise ValueError(
                f"{value} is too few: with fewer than {MIN_USERS_PER_ARM} rating users per arm the always-valid "
                "test makes more false decisions than alpha allows (A/A simulation at alpha 0.05: up to 14.5% "
                f"false decisions with 2); use {MIN_USERS_PER_ARM} or more"
            )
        return value
