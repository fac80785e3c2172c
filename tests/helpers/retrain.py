"""A retrain config on the tiny test model, and a folder's digest (to prove an incumbent was not touched)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from curation.config import CurationConfig
from infra.config import Config
from retrain.config import LoraConfig, RetrainConfig

TINY_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def config(tiny_lm, data: Path, **retrain) -> Config:
    base = RetrainConfig(
        min_new_samples=1,
        epochs=4,
        learning_rate=0.03,
        tokens_per_batch=512,
        max_seq_len=96,
        forgetting_tolerance=100.0,
        lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=TINY_TARGETS),
    )
    return Config(
        data_dir=data,
        base_model=str(tiny_lm),
        curation=CurationConfig(review_policy="auto"),
        retrain=base.model_copy(update=retrain),
    )


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()
