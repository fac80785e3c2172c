"""An adapter's fingerprint: the greedy tokens peft gives for one fixed prompt, written as `probe.json` next to
the adapter's files when it is trained. A serving engine that loads the adapter (vLLM) must give the same
tokens before the adapter takes traffic: that proves it loaded these weights, under this name, with the
same base, and not the base model alone or another adapter.

Greedy decoding is a plain argmax loop here (no `generate`, whose generation_config may add penalties), and it
goes past the end-of-sequence token, so the engine is asked the same way (`ignore_eos`).
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "probe.json"
PROMPT = [{"role": "user", "content": "What can you help me with, and how long does it take?"}]
TOKENS = 16


def prompt_ids(tokenizer) -> list[int]:
    return list(
        tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )


def greedy(model, tokenizer, n: int = TOKENS) -> dict:
    """{"prompt_ids", "tokens"}: n argmax tokens of `model` (peft or plain) after the chat-templated PROMPT."""
    import torch

    ids = prompt_ids(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tokens: list[int] = []
    with torch.inference_mode():
        step, past = torch.tensor([ids], device=device), None
        for _ in range(n):
            out = model(input_ids=step, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
            tokens.append(token)
            step = torch.tensor([[token]], device=device)
    model.train(was_training)
    return {"prompt_ids": ids, "tokens": tokens}


def write(folder: Path, probe: dict) -> None:
    (Path(folder) / FILE).write_text(json.dumps(probe) + "\n")


def read(folder: Path) -> dict | None:
    """The adapter's probe, or None when it has none (trained before probes were written)."""
    path = Path(folder) / FILE
    if not path.exists():
        return None
    probe = json.loads(path.read_text())
    if not (isinstance(probe.get("prompt_ids"), list) and isinstance(probe.get("tokens"), list) and probe["tokens"]):
        raise ValueError(f"{path}: not a probe (prompt_ids and tokens)")
    return probe
