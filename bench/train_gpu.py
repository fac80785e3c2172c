"""Training throughput at production shapes: a naive HF Trainer + peft against the recipe (bf16 LoRA, nf4 QLoRA).

    .venv/bin/python bench/train_gpu.py [--shapes llama-1b,llama-8b] [--steps 20] [--row 2048] [--rows 1]

Models are built from a config with random weights (nothing is downloaded) and saved once, in bf16, to a
temporary folder, so that every variant loads them as it loads any base model (nf4 quantizes on load).
The data: random token ids in samples of 128 to 1,536 tokens (a chat with its history), the loss on the
last quarter (the answer). For each shape, one after another (the GPU memory freed between):

  naive:  `transformers.Trainer` + peft LoRA, bf16, batches of --naive-batch samples padded to their longest,
          the model's own loss over every position (the usual first attempt);
  bf16:   `retrain.recipe.train`, bf16 weights, samples packed into rows of --row tokens (no padding
          compute, attention inside each sample), the output head on the answer positions only;
          Gradient checkpointing only if a row does not fit in memory without it (the probe decides).
  nf4:    the same on nf4 (QLoRA) weights with gradient checkpointing on (the small-GPU setting).

LoRA r=16 on all linear layers everywhere; the same learning rate and seed. Reported per variant: real
(non-padding) tokens per second after the first step, model FLOPs utilisation against 989 TFLOP/s (an
H100/H200's dense bf16 peak), peak GPU memory and the time to the first step. The FLOP count is NeMo
AutoModel's for LoRA, 4 x parameters per token (forward 2N, backward through the frozen weights 2N;
attention's own FLOPs not counted), so the figure compares with their 40.6% (Llama-3.1-8B, one H100).

On a machine without CUDA, `--shapes tiny` checks the script end to end in seconds (the figures mean
nothing there); a GPU machine without network needs bitsandbytes for nf4 (its wheel brought along).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16
SHAPES = {
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=1024, tie_word_embeddings=True,
    ),
    "llama-1b": dict(  # Llama-3.2-1B
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
    ),
    "llama-8b": dict(  # Llama-3.1-8B
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
    ),
}  # fmt: skip


def build(shape: str, folder: Path) -> int:
    """A random-weight Llama of `shape` saved in bf16 to `folder`; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    free()
    return params


def examples(n_tokens: int, vocab: int, longest: int, seed: int = 0):
    """Random samples until `n_tokens`: 128 to `longest` tokens each, the last quarter labelled."""
    from retrain import recipe

    rng = random.Random(seed)
    out, total = [], 0
    while total < n_tokens:
        n = rng.randint(min(128, longest), longest)
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        answer = max(1, n // 4)
        out.append(recipe.Example(ids, [recipe.IGNORE] * (n - answer) + ids[n - answer :], True, str(len(out))))
        total += n
    return out


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def naive(folder: Path, data, cfg, batch: int, steps: int) -> dict:
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if cuda else torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in data]
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    def pad(features: list[dict]) -> dict:  # right padding to the batch's longest, as the usual collators do
        width = max(len(f["input_ids"]) for f in features)
        return {
            k: torch.tensor([f[k] + [fill] * (width - len(f[k])) for f in features])
            for k, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))
        }

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=cfg.learning_rate,
            logging_steps=10_000, save_strategy="no", report_to=[], seed=cfg.seed, dataloader_num_workers=0,
            use_cpu=not cuda, bf16=cuda, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            data_collator=pad,
            callbacks=[Clock()],
        )
        started = time.perf_counter()
        trainer.train()
    mean = sum(len(e.input_ids) for e in data) / len(data)  # real tokens a sample, on average (order is shuffled)
    first = times[0] - started
    steady = (batch * mean * (len(times) - 1)) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    result = {"tokens_per_s": steady, "first_step_s": first, "peak_gib": peak_gib()}
    del trainer, model
    free()
    return result


def recipe_run(folder: Path, data, cfg, steps: int) -> dict:
    import torch

    from retrain import recipe

    cfg = cfg.model_copy(update={"max_steps": steps})
    model = recipe.load_model(folder, cfg, None)
    result = recipe.train(model, data, cfg, 0)
    out = {
        "tokens_per_s": result.steady_tokens_per_s,
        "first_step_s": result.first_step_s,
        "peak_gib": peak_gib(),
        "checkpointing": result.checkpointing,
    }
    del model
    free()
    assert torch.isfinite(torch.tensor(result.losses)).all()
    return out


def main() -> None:
    import torch

    from retrain.config import LoraConfig, RetrainConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="llama-1b,llama-8b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps a variant (the first is not timed)")
    parser.add_argument("--row", type=int, default=2048, help="packed row length, tokens")
    parser.add_argument("--rows", type=int, default=1, help="packed rows a step (the recipe's token budget)")
    parser.add_argument("--naive-batch", type=int, default=2, help="samples a step of the naive Trainer")
    parser.add_argument("--variants", default="naive,bf16,nf4")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in ("naive", "bf16", "nf4")]:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: naive, bf16, nf4")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA: a check of the script)"
    print(f"device: {device}; {args.steps} steps a variant, packed rows of {args.row} x {args.rows}")
    lora = LoraConfig(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    table = []
    for shape in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / shape
            started = time.perf_counter()
            params = build(shape, folder)
            print(f"{shape}: {params / 1e9:.2f}B parameters, built and saved in {time.perf_counter() - started:.0f} s")
            longest = min(1536, args.row)
            budget = args.row * args.rows
            data = examples(budget * (args.steps + 1), SHAPES[shape]["vocab_size"], longest)
            for variant in variants:
                cfg = RetrainConfig(
                    quantization="nf4" if variant == "nf4" else "none",
                    gradient_checkpointing="on" if variant == "nf4" else "auto",
                    packing="on",
                    lora=lora,
                    learning_rate=1e-4,
                    epochs=1,
                    tokens_per_batch=budget,
                    max_seq_len=args.row,
                )
                try:
                    if variant == "naive":
                        got = naive(folder, data, cfg, args.naive_batch, args.steps)
                    else:
                        got = recipe_run(folder, data, cfg, args.steps)
                except torch.cuda.OutOfMemoryError:
                    free()
                    got = {"tokens_per_s": float("nan"), "first_step_s": float("nan"), "peak_gib": float("inf")}
                got["mfu"] = got["tokens_per_s"] * 4 * params / PEAK_FLOPS
                table.append((shape, variant, got))
                print(
                    f"  {variant:5}  {got['tokens_per_s']:>10,.0f} tokens/s  MFU {got['mfu']:6.1%}  "
                    f"peak {got['peak_gib']:6.1f} GiB  first step {got['first_step_s']:6.1f} s"
                    + ("  (checkpointed)" if got.get("checkpointing") else ""),
                    flush=True,
                )
    print("\nshape     variant  tokens/s    MFU     peak GiB  first step  vs naive")
    for shape, variant, got in table:
        base = next((g for s, v, g in table if s == shape and v == "naive"), None)
        ratio = got["tokens_per_s"] / base["tokens_per_s"] if base and base["tokens_per_s"] > 0 else float("nan")
        print(
            f"{shape:9} {variant:7} {got['tokens_per_s']:>9,.0f}  {got['mfu']:6.1%}  {got['peak_gib']:8.1f}  "
            f"{got['first_step_s']:8.1f} s  {ratio:6.2f}x"
        )
    print("MFU: 4 x parameters x tokens/s against 989 TFLOP/s (NeMo AutoModel's LoRA count; attention not counted)")


if __name__ == "__main__":
    main()
