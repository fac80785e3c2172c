"""Gates between a training run and users, each run in a fresh process by the control process.

    python -m retrain.gates artifact ADAPTER_DIR [--parent DIR] [--rank R]
    python -m retrain.gates offline --base BASE --candidate DIR [--incumbent DIR] --snapshot SNAP [--tolerance T]

Each prints one JSON object {"ok": bool, "reason": str | null, ...numbers} as its last stdout line;
"judged": false when the gate itself failed and says nothing about the adapter.

Artifact: the PEFT files load, every tensor is finite, LoRA B is not all zero (a fresh adapter that did
not train), the tensors are those the config promises, and the weights differ from the parent's.
Offline: on the snapshot's eval split (users never seen in training) the candidate must have a lower mean
loss on desirable answers than the incumbent and, where the same prompt has a desirable and an
undesirable answer, at least its preference accuracy; on the general prompts shipped with the project its
loss may rise by at most the tolerance (forgetting).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path


def check_artifact(adapter: Path, parent: Path | None = None, rank: int | None = None) -> dict:
    import torch
    from peft import PeftConfig
    from safetensors.torch import load_file

    weights = adapter / "adapter_model.safetensors"
    if not weights.exists() or not (adapter / "adapter_config.json").exists():
        return {"ok": False, "reason": "adapter files missing (adapter_config.json, adapter_model.safetensors)"}
    config = PeftConfig.from_pretrained(str(adapter))
    tensors = load_file(str(weights))
    if not tensors:
        return {"ok": False, "reason": "the adapter holds no tensors"}
    out = {
        "tensors": len(tensors),
        "bytes": weights.stat().st_size,
        "parameters": sum(t.numel() for t in tensors.values()),
    }
    bad = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        return {**out, "ok": False, "reason": f"{len(bad)} tensors hold NaN or inf (first: {bad[0]})"}
    a = [k for k in tensors if "lora_A" in k]
    b = [k for k in tensors if "lora_B" in k]
    if not a or len(a) != len(b):
        return {**out, "ok": False, "reason": f"expected LoRA A/B pairs, found {len(a)} A and {len(b)} B"}
    if all(float(tensors[k].abs().max()) == 0.0 for k in b):
        return {**out, "ok": False, "reason": "every LoRA B is zero: the adapter does nothing (empty)"}
    r = rank if rank is not None else config.r
    wrong = [k for k in a if tensors[k].shape[0] != r]
    if wrong:
        return {**out, "ok": False, "reason": f"{len(wrong)} LoRA A tensors do not have rank {r}"}
    expected = sum(t.numel() * t.element_size() for t in tensors.values())
    if out["bytes"] < expected:
        return {**out, "ok": False, "reason": f"file is {out['bytes']} bytes, tensors need {expected}"}
    if parent is not None:
        before = load_file(str(parent / "adapter_model.safetensors"))
        if before.keys() == tensors.keys() and all(torch.equal(before[k], tensors[k]) for k in tensors):
            return {**out, "ok": False, "reason": "the adapter is unchanged from its parent"}
    return {**out, "ok": True, "reason": None}


def general_prompts() -> list[dict]:
    text = resources.files("retrain").joinpath("data/general_prompts.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _score(model, tokenizer, rows: list[dict], adapter: str | None) -> list[tuple[float, int]]:
    """(sum of answer-token NLL, answer tokens) per row, under `adapter` (None: the base model)."""
    import torch

    from retrain import recipe

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [recipe.render(r, tokenizer, 1024) for r in rows]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    index = {id(e): i for i, e in enumerate(examples)}
    with torch.no_grad():
        for batch in recipe.bucketed(examples, 8192, 0):
            tensors = recipe.collate(batch, pad)
            if adapter is None:
                with model.disable_adapter():
                    logp, rows_of = recipe.answer_logprobs(model, tensors)
            else:
                model.set_adapter(adapter)
                logp, rows_of = recipe.answer_logprobs(model, tensors)
            sums = torch.zeros(len(batch)).index_add(0, rows_of, -logp.float())
            counts = torch.zeros(len(batch)).index_add(0, rows_of, torch.ones_like(logp.float()))
            for e, s, c in zip(batch, sums.tolist(), counts.tolist()):
                out[index[id(e)]] = (s, int(c))
    return out


def _metrics(scores: list[tuple[float, int]], rows: list[dict], general: list[tuple[float, int]]) -> dict:
    desirable = [s for s, r in zip(scores, rows) if r["label"]]
    d_loss = sum(s for s, _ in desirable) / max(1, sum(n for _, n in desirable))
    by_prompt: dict[str, dict[bool, list[float]]] = defaultdict(lambda: {True: [], False: []})
    for (s, n), r in zip(scores, rows):
        by_prompt[json.dumps(r["prompt"], sort_keys=True)][bool(r["label"])].append(-s / max(1, n))
    wins = total = 0
    for sides in by_prompt.values():
        for good in sides[True]:
            for bad in sides[False]:
                total += 1
                wins += good > bad
    g_loss = sum(s for s, _ in general) / max(1, sum(n for _, n in general))
    return {
        "desirable_loss": round(d_loss, 5),
        "preference_pairs": total,
        "preference_accuracy": round(wins / total, 4) if total else None,
        "general_loss": round(g_loss, 5),
    }


def offline(base: Path, candidate: Path, incumbent: Path | None, snapshot: Path, tolerance: float) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.recipe import load_rows

    rows = load_rows(snapshot, "eval")
    if not any(r["label"] for r in rows):
        return {"ok": False, "reason": "the eval split has no desirable samples: nothing to judge by"}
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, str(candidate), adapter_name="candidate")
    if incumbent is not None:
        model.load_adapter(str(incumbent), adapter_name="incumbent")
    general = [
        {
            "prompt": [{"role": "user", "content": g["prompt"]}],
            "completion": [{"role": "assistant", "content": g["answer"]}],
            "label": True,
            "sample_id": str(i),
        }
        for i, g in enumerate(general_prompts())
    ]
    inc_name = "incumbent" if incumbent is not None else None
    cand = _metrics(_score(model, tokenizer, rows, "candidate"), rows, _score(model, tokenizer, general, "candidate"))
    inc = _metrics(_score(model, tokenizer, rows, inc_name), rows, _score(model, tokenizer, general, inc_name))
    out = {"candidate": cand, "incumbent": inc, "eval_samples": len(rows), "tolerance": tolerance}
    for side in (cand, inc):
        if not all(math.isfinite(v) for v in (side["desirable_loss"], side["general_loss"])):
            return {**out, "ok": False, "reason": "a loss is not finite"}
    if cand["desirable_loss"] >= inc["desirable_loss"]:
        return {
            **out,
            "ok": False,
            "reason": f"desirable-answer loss {cand['desirable_loss']:.4f} is not below the "
            f"incumbent's {inc['desirable_loss']:.4f}",
        }
    if cand["preference_accuracy"] is not None and cand["preference_accuracy"] < inc["preference_accuracy"]:
        return {
            **out,
            "ok": False,
            "reason": f"preference accuracy {cand['preference_accuracy']:.3f} is below the "
            f"incumbent's {inc['preference_accuracy']:.3f}",
        }
    if cand["general_loss"] > inc["general_loss"] * (1 + tolerance):
        return {
            **out,
            "ok": False,
            "reason": f"general-prompt loss rose from {inc['general_loss']:.4f} to "
            f"{cand['general_loss']:.4f}, over the {tolerance:.0%} tolerance",
        }
    return {**out, "ok": True, "reason": None}


def main(argv: list[str]) -> int:
    from infra.models import offline_hub

    offline_hub()
    parser = argparse.ArgumentParser(prog="python -m retrain.gates")
    sub = parser.add_subparsers(dest="gate", required=True)
    a = sub.add_parser("artifact")
    a.add_argument("adapter", type=Path)
    a.add_argument("--parent", type=Path)
    a.add_argument("--rank", type=int)
    o = sub.add_parser("offline")
    o.add_argument("--base", type=Path, required=True)
    o.add_argument("--candidate", type=Path, required=True)
    o.add_argument("--incumbent", type=Path)
    o.add_argument("--snapshot", type=Path, required=True)
    o.add_argument("--tolerance", type=float, default=0.1)
    args = parser.parse_args(argv)
    try:
        if args.gate == "artifact":
            verdict = check_artifact(args.adapter, args.parent, args.rank)
        else:
            verdict = offline(args.base, args.candidate, args.incumbent, args.snapshot, args.tolerance)
    except Exception as e:  # a gate that cannot judge says no
        first_line = (str(e).splitlines() or [""])[0][:300]
        verdict = {"ok": False, "judged": False, "reason": f"the gate failed: {type(e).__name__}: {first_line}"}
    print(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
