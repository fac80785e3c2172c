"""The bundled base model: dequantized once, cached as safetensors, loaded offline."""

import pytest

from infra.errors import FlywheelError
from infra.models import MANIFEST, model_hash, resolve_base_model


@pytest.mark.slow
def test_bundled_gguf_is_converted_once_and_answers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_model("bundled:SmolLM2-135M-Instruct", tmp_path)
    assert (path / "model.safetensors").exists() and (path / MANIFEST).exists()
    config = (path / "config.json").read_text()
    assert "quantization_config" not in config  # plain tensors: no loader may treat them as GGUF
    written = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_base_model("bundled:SmolLM2-135M-Instruct", tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == written  # cached: not converted again
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(model_hash(path)) == 64


def test_a_local_hf_folder_is_used_as_is(tiny_lm, tmp_path):
    assert resolve_base_model(str(tiny_lm), tmp_path) == tiny_lm


def test_a_hub_id_is_refused_rather_than_downloaded(tmp_path):
    with pytest.raises(FlywheelError, match="never downloaded"):
        resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
