"""The `retrain` config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank: capacity of the adapter (and its size).")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (effective scale alpha/r).")
    dropout: float = Field(
        0.05, ge=0, lt=1, description="Dropout on the LoRA input (SFT; KTO runs without, as TRL does)."
    )
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or a list of names."
    )


class RetrainConfig(Section):
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto",
        description="none: full-precision base weights (bf16 on CUDA, fp32 on CPU); nf4: QLoRA; auto: on CUDA "
        "bf16 where the weights take at most half the free GPU memory, else nf4; on CPU none (nf4 is ~20x slower).",
    )
    objective: Literal["sft", "kto"] = Field(
        "sft", description="sft: learn the desirable answers; kto: also push away from undesirable ones."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Adapter shape.")
    epochs: float = Field(2.0, gt=0, description="Passes over the training samples.")
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps (0: no limit).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (linear warmup and decay).")
    incremental_lr_scale: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A run that starts from the live adapter trains at learning_rate times this: the adapter holds "
        "what earlier nights taught, and full-size steps on one day's data move it further from the base model "
        "than the day needs (the forgetting gate's general-prompt loss).",
    )
    tokens_per_batch: int = Field(4096, ge=64, description="Token budget of a batch (length-bucketed).")
    max_seq_len: int = Field(
        512, ge=16, description="Longer samples are cut (the prompt from the left); also a packed row's length."
    )
    packing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="on: samples end to end in rows of max_seq_len, attention kept inside each (no padding "
        "compute); off: length-bucketed padded batches; auto: on with CUDA, off on CPU.",
    )
    micro_tokens: int = Field(
        0,
        ge=0,
        description="The most tokens one forward and backward pass takes: a larger batch is cut into parts and "
        "their gradients added up (the same step). 0: on CUDA sized from the free GPU memory by a probe pass "
        "before training, on CPU the whole batch.",
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Recompute activations in the backward pass: far less memory, about a third more compute. "
        "auto: on CUDA only when the probe finds that one row of max_seq_len tokens does not fit without it; "
        "off on CPU.",
    )
    max_new_samples: int = Field(
        0,
        ge=0,
        description="A run trains on at most this many new samples (0: no limit), a seeded random choice when "
        "there are more; the replay share comes on top, and the rest stay new for the next run. Bounds a night "
        "that retrains from base on everything (after a forget tainted the live adapter).",
    )
    replay_share: float = Field(
        0.2, ge=0, lt=1, description="Share of each run's samples replayed from earlier snapshots."
    )
    kto_beta: float = Field(0.1, gt=0, description="KTO: how far from the reference the policy may move.")
    forgetting_tolerance: float = Field(
        0.10, ge=0, description="Offline gate: the most the loss on general prompts may rise (relative)."
    )
    gpus: int = Field(
        1,
        ge=1,
        description="Training processes: more than 1 runs the worker under torchrun, one process per GPU, each "
        "step split across them and the gradients summed (the same adapter as one process, dropout aside); "
        "without CUDA they are CPU processes (gloo), as the tests run them.",
    )
    timeout_s: float = Field(4 * 3600, gt=0, description="A training run longer than this is killed.")
    schedule: str = Field("0 2 * * *", description="Cron expression of the nightly run (local time).")
    misfire_grace_s: int = Field(3600, ge=1, description="A run missed by up to this much still runs once.")
    min_new_samples: int = Field(50, ge=1, description="Skip a scheduled run with fewer new samples.")
    seed: int = Field(0, description="Training seed.")
