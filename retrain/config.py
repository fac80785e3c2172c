"""The `retrain` config section."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank: capacity of the adapter (and its size).")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (effective scale alpha/r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or a list of names."
    )


class RetrainConfig(Section):
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto", description="auto: nf4 (QLoRA) on CUDA, none on CPU, where nf4 is ~20x slower."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Adapter shape.")
    schedule: str = Field("0 2 * * *", description="Cron expression of the nightly run (local time).")
    min_new_samples: int = Field(50, ge=1, description="Skip a scheduled run with fewer new samples.")
    seed: int = Field(0, description="Training seed.")
