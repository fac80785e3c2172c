"""Adapters appear and disappear without restart; assignment is sticky across restarts."""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from abtest.routing import Routing
from serving.generator import BASE, AdapterGone, BatchGenerator, GenRequest
from serving.routing import ModelHolder, Router, publish
from tests.conftest import fused_matrices


@pytest.fixture(scope="module")
def adapters(tiny_lm, tmp_path_factory):
    out = {}
    for i, version in enumerate(["v0001", "v0002"]):
        torch.manual_seed(10 + i)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_lm),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        path = tmp_path_factory.mktemp(version)
        model.save_pretrained(path)
        out[version] = str(path)
    return out


def answer(gen, tokenizer, adapter):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where is my order?"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    return gen.submit(GenRequest(prompt, max_tokens=6, temperature=0, adapter=adapter)).result(timeout=60)


def test_adapters_come_and_go_while_serving(tiny_lm, adapters, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    gen = BatchGenerator(AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), tokenizer).start()
    gen.eos = set()
    router = Router(tmp_path / "routing.json", ModelHolder(gen))
    try:
        base_before = answer(gen, tokenizer, BASE).text
        assert router.route("anyone") == (BASE, None) and router.variants() == [BASE]

        publish(
            tmp_path,
            Routing.parse(
                {
                    "experiment_id": "exp-1",
                    "salt": "s1",
                    "split": [["base", 0.5], ["v0001", 0.5]],
                    "adapters": {"v0001": adapters["v0001"]},
                }
            ),
        )
        assert router.refresh()
        assert router.variants() == [BASE, "v0001"]
        with_adapter = answer(gen, tokenizer, "v0001").text
        assert with_adapter != base_before and answer(gen, tokenizer, BASE).text == base_before
        users = {router.route(f"u{i}")[0] for i in range(200)}
        assert users == {BASE, "v0001"} and router.route("u1")[1] == "exp-1"

        publish(
            tmp_path,
            Routing.parse(
                {
                    "experiment_id": "exp-2",
                    "salt": "s2",
                    "split": [["v0001", 0.9], ["v0002", 0.1]],
                    "adapters": {"v0001": adapters["v0001"], "v0002": adapters["v0002"]},
                }
            ),
        )
        router.refresh()
        assert answer(gen, tokenizer, "v0001").text == with_adapter  # untouched by its neighbour's arrival

        before = fused_matrices(gen.model)
        publish(
            tmp_path,
            Routing.parse(
                {
                    "experiment_id": "exp-2",
                    "salt": "s2",
                    "split": [["v0001", 0.5], ["v0002", 0.5]],
                    "adapters": {"v0001": adapters["v0001"], "v0002": adapters["v0002"]},
                }
            ),
        )
        assert router.refresh() and dict(router.current.split)["v0002"] == 0.5  # an A/B ramp
        assert answer(gen, tokenizer, "v0002").text != with_adapter
        after = fused_matrices(gen.model)
        assert before and len(after) == len(before) and all(a is b for a, b in zip(after, before))  # not rebuilt

        publish(tmp_path, Routing.parse({"split": [["base", 1.0]], "adapters": {}}))
        router.refresh()
        assert router.variants() == [BASE] and answer(gen, tokenizer, BASE).text == base_before
        with pytest.raises(AdapterGone, match="no longer served"):
            answer(gen, tokenizer, "v0001")
    finally:
        gen.close()


def test_a_bad_routing_file_keeps_the_current_split(tiny_lm, adapters, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    gen = BatchGenerator(AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), tokenizer)
    router = Router(tmp_path / "routing.json", ModelHolder(gen))
    (tmp_path / "routing.json").write_text('{"split": [["v0009", 1.0]], "adapters": {}}')
    assert not router.refresh()
    assert router.variants() == [BASE]
    with pytest.raises(ValueError, match="add up to 1"):
        Routing.parse({"split": [["base", 0.5]]})


@pytest.mark.slow
def test_assignment_survives_a_restart(tiny_lm, adapters, tmp_path):
    """Each server lifetime is its own interpreter, with its own hash seed: a user must land on the same
    variant in every one (a `hash()`-based assignment would move users at each restart)."""
    routing = {
        "experiment_id": "e",
        "salt": "x",
        "split": [["base", 0.7], ["v0001", 0.3]],
        "adapters": {"v0001": adapters["v0001"]},
    }
    publish(tmp_path, Routing.parse(routing))
    script = (
        "import json, sys; from pathlib import Path; "
        "from transformers import AutoModelForCausalLM, AutoTokenizer; "
        "from serving.generator import BatchGenerator; from serving.routing import ModelHolder, Router; "
        f"gen = BatchGenerator(AutoModelForCausalLM.from_pretrained({str(tiny_lm)!r}).eval(), "
        f"AutoTokenizer.from_pretrained({str(tiny_lm)!r})); "
        f"router = Router(Path({str(tmp_path / 'routing.json')!r}), ModelHolder(gen)); router.refresh(); "
        "print(json.dumps([router.route(f'user-{i}')[0] for i in range(300)]))"
    )
    seen = []
    for seed in ("1", "2"):  # two server lifetimes
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        seen.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert seen[0] == seen[1] and set(seen[0]) == {"base", "v0001"}
