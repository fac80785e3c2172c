"""The `curation` config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CurationConfig(Section):
    review_policy: Literal["required", "sample", "auto"] = Field(
        "required",
        description="Who approves samples: a reviewer (required), a reviewer for a seeded share and the "
        "policy for the rest (sample), or nobody (auto, for demos; logged as such).",
    )
    review_sample_share: float = Field(
        0.1, gt=0, le=1, description="Under policy 'sample': the share of new samples a reviewer must see."
    )
    include_unrated: bool = Field(False, description="Also turn unrated chats into (desirable) samples.")
    max_user_share: float = Field(
        0.02, gt=0, le=1, description="Most of a snapshot that one user's samples may make up."
    )
    max_answer_share: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Most of a snapshot that one answer text (case and spacing aside) may make up, whoever sent "
        "it: coordinated accounts pushing one answer place at most this. A store whose few policies are each "
        "corrected by many agents in the same words may need more.",
    )
    min_prompt_chars: int = Field(2, ge=0, description="Shorter prompts (last user message) are dropped.")
    max_prompt_chars: int = Field(8_000, ge=1, description="Longer prompts (all messages) are dropped.")
    min_answer_chars: int = Field(2, ge=0, description="Shorter answers are dropped.")
    max_answer_chars: int = Field(4_000, ge=1, description="Longer answers are dropped.")
    languages: list[str] = Field(
        ["en"], description="ISO 639-1 codes kept; texts too short to tell are kept. Empty: keep all."
    )
    near_duplicate_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Jaccard similarity (MinHash) of prompt and of answer above which two "
        "samples with the same label are one.",
    )
    supersede_newest: int = Field(
        5,
        ge=1,
        description="How many of an answer's latest labels decide whether users now reject it (a majority of "
        "thumbs-down drops its desirable samples, old ones and replayed ones too, as superseded). Fewer follow "
        "a change sooner; more let fewer stray thumbs-down through.",
    )
    contest_similarity: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Questions this alike (TF-IDF cosine of their words) are the same question to the contest "
        "rule: a correction is dropped as contested, with the thumbs-down it came with, when more users who "
        "asked an alike question between the same two snapshots rated the answer it replaces up than down "
        "(coordinated accounts teaching a false answer). Higher compares fewer questions; 1: only the same words.",
    )
    revision_similarity: float = Field(
        0.4,
        gt=0,
        le=1,
        description="A correction this similar to an earlier desirable answer (word 3-grams, Jaccard), but "
        "below the near-duplicate threshold, rewrites it (a policy whose number changed): the earlier answer is "
        "superseded. Lower catches bigger rewrites and risks unrelated answers.",
    )
    max_placeholder_share: float = Field(
        0.5, gt=0, le=1, description="Answers whose text is more than this share of <PII> placeholders are dropped."
    )
    eval_share: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of users whose samples form the eval split (at most twice this share of the rows).",
    )
    seed: int = Field(0, description="Seed for splits and sampling; same data + seed = same snapshot.")
