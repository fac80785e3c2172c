"""Training throughput: the recipe versus a naive Hugging Face Trainer on the same model, data and LoRA.

    .venv/bin/python bench/train.py [--samples 160] [--model bundled:SmolLM2-135M-Instruct]

Both train one epoch of LoRA (r=16, all linear layers, same learning rate and seed) on the same rendered
store-support samples (system + user prompt, loss on the answer only):
  naive:  `transformers.Trainer`, batches of 8 in random order padded to their longest sample, the
          model's own loss (the output head over every position);
  recipe: `retrain.recipe.train`, length-bucketed batches under the same average token budget, the
          output head only on the answer positions.
Reported: real (non-padding) tokens per second of each, and the ratio. Target >= 2x on CPU.
On CUDA the recipe runs bf16 LoRA where the model fits, else QLoRA (nf4); pass a larger --model (any local
HF folder) for the GPU figures, which also prints peak memory and model FLOPs utilisation (production shapes
and packed rows: bench/train_gpu.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def samples(n: int, seed: int = 0) -> list[dict]:
    from ingest import synthetic

    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = synthetic.chat(rng, f"user-{i}")
        answer = (
            c.response if rng.random() < 0.5 else c.response + " " + rng.choice(synthetic.ANSWERS).format(order="#1")
        )
        out.append(
            {
                "sample_id": str(i),
                "label": True,
                "prompt": [{"role": m.role, "content": m.content} for m in c.messages],
                "completion": [{"role": "assistant", "content": answer}],
            }
        )
    return out


def naive(base: Path, examples, cfg, batch_size: int) -> float:
    import datasets
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from retrain import recipe

    model = recipe.load_model(base, cfg, None)
    data = datasets.Dataset.from_list(
        [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in examples]
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            num_train_epochs=1,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=1,
            max_grad_norm=1.0,
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            seed=cfg.seed,
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
            bf16=torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        )
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def main() -> None:
    import torch
    from transformers import AutoTokenizer

    from infra.models import resolve_base_model
    from retrain import recipe
    from retrain.config import RetrainConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", default="bundled:SmolLM2-135M-Instruct")
    parser.add_argument("--data-dir", default=str(ROOT / "var"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    base = resolve_base_model(args.model, Path(args.data_dir) / "models")
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = [recipe.render(r, tokenizer, 512) for r in samples(args.samples)]
    real = sum(len(e.input_ids) for e in examples)
    mean_len = real / len(examples)
    cfg = RetrainConfig(epochs=1, tokens_per_batch=int(args.batch * mean_len * 1.15), seed=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"{args.samples} samples, {real:,} tokens (mean {mean_len:.0f}), {args.model} on {device}, "
        f"{torch.get_num_threads()} threads, quantization {'nf4' if recipe.use_nf4(cfg, base) else 'none'}"
    )

    naive_s = naive(base, examples, cfg, args.batch)
    print(
        f"naive HF Trainer (batches of {args.batch}, padded to longest): {real / naive_s:,.1f} tokens/s "
        f"({naive_s:.1f} s)"
    )
    model = recipe.load_model(base, cfg, None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = recipe.train(model, examples, cfg, pad)
    print(
        f"recipe (bucketed, head on answers only): {result.tokens_per_s:,.1f} tokens/s ({result.seconds:.1f} s, "
        f"{result.steps} steps)"
    )
    print(f"ratio: {result.tokens_per_s / (real / naive_s):.2f} (target >= 2 on CPU)")
    if device == "cuda":
        params = sum(p.numel() for p in model.parameters())
        flops = 6 * params * result.tokens_per_s  # forward + backward, dense estimate
        peak = torch.cuda.get_device_properties(0)
        print(
            f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; "
            f"~{flops / 1e12:.1f} TFLOP/s model FLOPs on {peak.name}"
        )


if __name__ == "__main__":
    main()
