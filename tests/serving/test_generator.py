"""The batched generator on a tiny Llama: same answers as one-at-a-time `generate`, per-row settings."""

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.generator import BASE, BatchGenerator, GenRequest, QueueFull
from tests.conftest import fused_matrices

PROMPTS = ["Where is my order?", "Returns", "Our headphones come with a warranty. Orders ship within 2 days."]


@pytest.fixture(scope="module")
def lm(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()
    return model, tokenizer


def ids(tokenizer, text):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]


def reference(model, tokenizer, prompt_ids, n):
    """What transformers' own greedy generate says for this prompt alone."""
    out = model.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=n,
        do_sample=False,
        min_new_tokens=n,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)


def run(gen: BatchGenerator, reqs: list[GenRequest]):
    gen.generate(reqs)
    return [r.future.result() for r in reqs]


def test_a_padded_batch_answers_like_each_prompt_alone(lm):
    model, tokenizer = lm
    gen = BatchGenerator(model, tokenizer)
    gen.eos = set()  # the random model may emit EOS anywhere; compare full-length continuations
    reqs = [GenRequest(ids(tokenizer, p), max_tokens=12, temperature=0) for p in PROMPTS]
    positions = []  # the prefill asks the lm_head for the last position only, not the whole prompt
    hook = model.lm_head.register_forward_hook(lambda m, args, out: positions.append(args[0].shape[1]))
    try:
        results = run(gen, reqs)
    finally:
        hook.remove()
    assert positions and set(positions) == {1}
    for p, r in zip(PROMPTS, results):
        assert r.text == reference(model, tokenizer, ids(tokenizer, p), 12)
        assert (r.finish_reason, r.completion_tokens) == ("length", 12)


def test_stop_strings_seeds_and_streaming(lm):
    model, tokenizer = lm
    gen = BatchGenerator(model, tokenizer)
    gen.eos = set()
    [full] = run(gen, [GenRequest(ids(tokenizer, PROMPTS[0]), max_tokens=16, temperature=0)])
    stop = full.text[5:7]
    [cut] = run(gen, [GenRequest(ids(tokenizer, PROMPTS[0]), max_tokens=16, temperature=0, stop=[stop])])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]

    a, b, c = (GenRequest(ids(tokenizer, PROMPTS[1]), max_tokens=10, temperature=1.0, seed=s) for s in (7, 7, 8))
    ra, rb, rc = run(gen, [a, b, c])
    assert ra.text == rb.text  # same seed, same sample, even side by side in one batch
    assert ra.text != rc.text

    pieces = []
    streamed = GenRequest(ids(tokenizer, PROMPTS[2]), max_tokens=14, temperature=0, on_text=pieces.append)
    [result] = run(gen, [streamed])
    assert "".join(pieces) == result.text and len(pieces) > 1


def test_rows_on_different_adapters_share_a_batch(lm, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = lm
    torch.manual_seed(1)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model.name_or_path), cfg, adapter_name="v0001")
    peft_model.add_adapter("v0002", cfg)
    peft_model.eval()
    from serving import lora_batch

    assert lora_batch.install(peft_model) > 0
    gen = BatchGenerator(peft_model, tokenizer)
    gen.eos = set()
    prompt = ids(tokenizer, PROMPTS[0])
    mixed = run(gen, [GenRequest(prompt, max_tokens=8, temperature=0, adapter=a) for a in ("v0001", BASE, "v0002")])
    alone = {}
    for adapter in ("v0001", "v0002"):
        peft_model.set_adapter(adapter)
        alone[adapter] = reference(peft_model, tokenizer, prompt, 8)
    with peft_model.disable_adapter():
        alone[BASE] = reference(peft_model, tokenizer, prompt, 8)
    assert [r.text for r in mixed] == [alone["v0001"], alone[BASE], alone["v0002"]]
    assert len({r.text for r in mixed}) == 3  # the adapters really differ
    fused = fused_matrices(peft_model)
    assert fused and all(f is not None for f in fused)  # the fused path answered, and answered the same


def test_queue_depth_bounds_waiting_requests(lm):
    model, tokenizer = lm
    gen = BatchGenerator(model, tokenizer, queue_depth=2)  # not started: nothing drains the queue
    gen.submit(GenRequest([1, 2]))
    gen.submit(GenRequest([1, 2]))
    with pytest.raises(QueueFull):
        gen.submit(GenRequest([1, 2]))


def test_concurrent_submissions_are_batched_together(lm):
    model, tokenizer = lm
    gen = BatchGenerator(model, tokenizer, max_batch=8, max_wait_ms=200)
    sizes = []
    real = gen._join
    gen._join = lambda rows, state, batch: (sizes.append(len(batch)), real(rows, state, batch))[1]
    gen.start()
    try:
        futures = []
        threads = [
            threading.Thread(
                target=lambda: futures.append(
                    gen.submit(GenRequest(ids(tokenizer, PROMPTS[0]), max_tokens=4, temperature=0))
                )
            )
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [f.result(timeout=30) for f in futures]
    finally:
        gen.close()
    assert len(results) == 8 and len({r.text for r in results}) == 1
    assert max(sizes) > 1, sizes


def test_a_request_joins_a_running_batch_and_answers_as_if_alone(lm):
    model, tokenizer = lm
    gen = BatchGenerator(model, tokenizer, max_batch=4, max_wait_ms=0)
    gen.eos = set()
    first_tokens = threading.Event()
    long_req = GenRequest(
        ids(tokenizer, PROMPTS[2]), max_tokens=40, temperature=0, on_text=lambda _text: first_tokens.set()
    )
    gen.start()
    try:
        gen.submit(long_req)
        assert first_tokens.wait(30)  # the long answer is under way
        late = [GenRequest(ids(tokenizer, p), max_tokens=6, temperature=0) for p in PROMPTS[:2]]
        for r in late:
            gen.submit(r)
        late_results = [r.future.result(timeout=60) for r in late]
        assert not long_req.future.done()  # the late ones finished while the long one still runs
        long_result = long_req.future.result(timeout=60)
    finally:
        gen.close()
    for p, r in zip(PROMPTS[:2], late_results):
        assert r.text == reference(model, tokenizer, ids(tokenizer, p), 6)
    assert long_result.text == reference(model, tokenizer, ids(tokenizer, PROMPTS[2]), 40)


def test_a_tiny_temperature_samples_greedily_and_a_broken_batch_fails_its_requests(lm, monkeypatch):
    """Found by Schemathesis: temperature 1e-300 made the probabilities NaN, and a request that failed while
    joining the batch was never answered (its client waited forever)."""
    model, tokenizer = lm
    gen = BatchGenerator(model, tokenizer).start()
    try:
        gen.eos = set()

        def answer(**settings):
            return gen.submit(GenRequest(ids(tokenizer, PROMPTS[0]), max_tokens=8, **settings)).result(timeout=60)

        greedy, tiny = answer(temperature=0), answer(temperature=1e-300, seed=3)
        assert tiny.text == greedy.text

        def broken(*args):
            raise RuntimeError("injected: the batch could not be built")

        monkeypatch.setattr(gen, "_join", broken)
        req = gen.submit(GenRequest(ids(tokenizer, PROMPTS[1]), max_tokens=4, temperature=0))
        with pytest.raises(RuntimeError, match="injected"):
            req.result(timeout=30)
        monkeypatch.undo()
        assert answer(temperature=0).text == greedy.text  # the thread lives on
    finally:
        gen.close()
