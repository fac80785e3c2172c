"""KTO on the real model: does a run on a mixed up/down snapshot raise the desirable answers and lower the
undesirable ones on held-out rows?

    .venv/bin/python bench/kto.py [--samples 240] [--epochs 2] [--model bundled:SmolLM2-135M-Instruct]

The rows are the demo store's questions (demo/store.py): a desirable answer states the asked-about policy,
an undesirable one states another topic's policy (what the store's customers rate down), two desirable
rows to one undesirable. Training uses five of each topic's six question wordings; the held-out rows use
the sixth, with items never seen in training. Training is `retrain.recipe.train` with the shipped
defaults and `objective=kto` (LoRA r=16, lr 2e-4, beta 0.1). Reported, on the held-out rows: the mean
change of the answer's log-probability against the starting weights (nats per answer and per token) for
desirable and undesirable answers, and how often a prompt's desirable answer gained more than its
undesirable one; the same on the training rows; and the seconds taken.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rows(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    from demo.store import ITEMS, SYSTEM, TOPICS

    rng = random.Random(seed)
    seen_items, new_items = ITEMS[:8], ITEMS[8:]

    def row(i: int, topic, wording: str, item: str, desirable: bool) -> dict:
        other = rng.choice([t for t in TOPICS if t is not topic])
        answer = topic.policy if desirable else other.policy
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": wording.format(item=item)}]
        return {
            "sample_id": f"{'d' if desirable else 'u'}{i}",
            "label": desirable,
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": answer}],
        }

    train = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        train.append(row(i, topic, rng.choice(topic.questions[:5]), rng.choice(seen_items), desirable=i % 3 != 2))
    held_out = []
    for i, (topic, item) in enumerate((t, it) for t in TOPICS for it in new_items):
        held_out += [
            row(10_000 + i, topic, topic.questions[5], item, True),
            row(20_000 + i, topic, topic.questions[5], item, False),
        ]
    return train, held_out


def deltas(model, ref_model, examples, pad_id: int):
    import torch

    from retrain import recipe

    out = []
    with torch.no_grad():
        for e in examples:
            batch = recipe.collate([e], pad_id)
            out.append(float(recipe.sequence_logprobs(model, batch) - recipe.sequence_logprobs(ref_model, batch)))
    return out


def report(name: str, examples, delta: list[float]) -> None:
    good = [(d, e) for d, e in zip(delta, examples) if e.desirable]
    bad = [(d, e) for d, e in zip(delta, examples) if not e.desirable]

    def mean(xs):
        return sum(xs) / len(xs)

    line = name
    for label, xs in (("desirable", good), ("undesirable", bad)):
        line += (
            f"  {label} {mean([d for d, _ in xs]):+.2f} nats/answer "
            f"({sum(d for d, _ in xs) / sum(e.n_labels for _, e in xs):+.3f}/token, n={len(xs)})"
        )
    print(line)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infra.models import resolve_base_model
    from retrain import recipe
    from retrain.config import RetrainConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="bundled:SmolLM2-135M-Instruct")
    parser.add_argument("--data-dir", default=str(ROOT / "var"))
    args = parser.parse_args()
    base = resolve_base_model(args.model, Path(args.data_dir) / "models")
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg = RetrainConfig(objective="kto", epochs=args.epochs, seed=args.seed)
    train_rows, held_rows = rows(args.samples, args.seed)
    train = [recipe.render(r, tokenizer, cfg.max_seq_len) for r in train_rows]
    held = [recipe.render(r, tokenizer, cfg.max_seq_len) for r in held_rows]
    n_good = sum(e.desirable for e in train)
    print(
        f"{len(train)} training rows ({n_good} desirable, {len(train) - n_good} undesirable), {len(held)} held-out "
        f"rows (an unseen wording of each topic, unseen items); {args.model}, kto, lr {cfg.learning_rate:g}, "
        f"beta {cfg.kto_beta:g}, {cfg.epochs:g} epochs"
    )
    model = recipe.load_model(base, cfg, None)
    started = time.perf_counter()
    result = recipe.train(model, train, cfg, pad)
    print(
        f"trained: {result.steps} steps in {time.perf_counter() - started:.0f} s ({result.tokens_per_s:,.0f} tokens/s)"
    )
    model.eval()
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()  # the starting weights
    held_delta = deltas(model, ref, held, pad)
    report("held-out:", held, held_delta)
    wins = sum(g > b for g, b in zip(held_delta[0::2], held_delta[1::2]))
    print(f"held-out prompts whose desirable answer gained more than the undesirable one: {wins}/{len(held) // 2}")
    sample = train[:: max(1, len(train) // 60)]
    report("training rows:", sample, deltas(model, ref, sample, pad))


if __name__ == "__main__":
    main()
