"""The `serving` config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServingConfig(Section):
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API listens on; 0 picks a free one.")
    max_body_bytes: int = Field(1_000_000, ge=1_024, description="Larger request bodies get 413.")
    queue_depth: int = Field(64, ge=1, description="Generation requests waiting beyond this get 503.")
