"""A LoRA adapter on the real base model without training it: random, non-zero weights on every linear layer
(strong enough to change a greedy answer), saved as retrain saves one, with its probe (`retrain.probe`)."""

from __future__ import annotations

from pathlib import Path


def random_adapter(base: Path, folder: Path, seed: int, tokenizer, std: float = 0.05) -> dict:
    """Writes the adapter into `folder`; returns its probe."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retrain import probe

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    peft = get_peft_model(model, lora)
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_" in name:
                weight.mul_(std / weight.std())
    peft.save_pretrained(folder)
    found = probe.greedy(peft, tokenizer)
    probe.write(folder, found)
    return found
