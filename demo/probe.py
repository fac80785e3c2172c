"""What an adapter would rather say: for each (question, one answer, another), the log-likelihood the base model
with the adapter gives the first answer minus the one it gives the second (> 0: it prefers the first).
Sampled answers are noisy on a few dozen questions; these margins are exact and take seconds."""

from __future__ import annotations

from pathlib import Path

from demo import store


def margins(base: Path, adapter: Path | None, probes: list[tuple[str, str, str]]) -> list[float]:
    """Per (question, answer, other): log p(answer | question) - log p(other | question), in nats."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()

    def log_likelihood(chat: list[dict], answer: str) -> float:
        head = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = tokenizer.apply_chat_template(
            [*chat, {"role": "assistant", "content": answer}], tokenize=True, return_dict=True, return_tensors="pt"
        )["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
        return float(logp[len(head["input_ids"]) - 1 :].sum())

    out = []
    for question, answer, other in probes:
        chat = [{"role": "system", "content": store.SYSTEM}, {"role": "user", "content": question}]
        out.append(log_likelihood(chat, answer) - log_likelihood(chat, other))
    return out
