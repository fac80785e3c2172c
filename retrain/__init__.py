"""The LoRA/QLoRA recipe, model loading, artifact gate, offline eval, adapter registry, schedule policy."""
