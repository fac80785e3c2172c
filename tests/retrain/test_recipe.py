"""The training recipe on a tiny Llama built from config: seconds on CPU."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from retrain import gates, recipe
from retrain.config import LoraConfig, RetrainConfig
from tests.helpers.retrain import TINY_TARGETS

FACTS = [
    ("Where is my order?", "It ships on Tuesday."),
    ("Can I return shoes?", "Yes, within 30 days."),
    ("What warranty do headphones have?", "One year."),
    ("Do you ship on weekends?", "Orders ship in 2 days."),
]


def rows(n_repeat: int = 4, undesirable: bool = False):
    out = []
    for k in range(n_repeat):
        for i, (q, a) in enumerate(FACTS):
            out.append(
                {
                    "sample_id": f"s{k}-{i}",
                    "label": True,
                    "prompt": [{"role": "user", "content": q}],
                    "completion": [{"role": "assistant", "content": a}],
                }
            )
            if undesirable:
                out.append(
                    {
                        "sample_id": f"u{k}-{i}",
                        "label": False,
                        "prompt": [{"role": "user", "content": q}],
                        "completion": [{"role": "assistant", "content": "No."}],
                    }
                )
    return out


# The tiny model's output head is initialised so small that only an adapter on it can move the logits.
CFG = RetrainConfig(
    quantization="none",
    learning_rate=3e-2,
    epochs=30,
    tokens_per_batch=256,
    max_seq_len=128,
    lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=TINY_TARGETS),
)


@pytest.fixture
def tokenizer(tiny_lm):
    return AutoTokenizer.from_pretrained(tiny_lm)


def test_render_puts_the_loss_on_the_answer_only(tokenizer):
    e = recipe.render(rows(1)[0], tokenizer, 128)
    answer = [t for t, l in zip(e.input_ids, e.labels) if l != recipe.IGNORE]
    assert tokenizer.decode(answer).startswith("It ships on Tuesday.")
    assert e.labels[0] == recipe.IGNORE and e.n_labels == len(answer) < len(e.input_ids)
    cut = recipe.render(rows(1)[0], tokenizer, 8)  # too long: the prompt is cut from the left, the answer stays
    assert len(cut.input_ids) == 8 and cut.labels[-1] == e.labels[-1]


def test_bucketing_wastes_less_on_padding_and_keeps_the_budget(tokenizer):
    import random

    rng = random.Random(0)
    examples = [recipe.Example(list(range(rng.randint(5, 120))), [1] * 5, True, str(i)) for i in range(400)]
    batches = recipe.bucketed(examples, 512, 0)
    assert sorted(e.sample_id for b in batches for e in b) == sorted(e.sample_id for e in examples)
    assert all(max(len(e.input_ids) for e in b) * len(b) <= 512 or len(b) == 1 for b in batches)
    padded = sum(max(len(e.input_ids) for e in b) * len(b) for b in batches)
    naive = sum(max(len(e.input_ids) for e in examples[i : i + 8]) * len(examples[i : i + 8]) for i in range(0, 400, 8))
    real = sum(len(e.input_ids) for e in examples)
    assert padded - real < 0.25 * (naive - real)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_packed_batch_gives_every_sample_the_loss_and_gradient_it_has_alone(tiny_lm, tokenizer, device):
    """Packed rows (position ids restarting at each sample, no attention mask) against one padded row per
    sample: the same log-probability per sample and the same gradient, in fp32; no row is over its length
    but for a sample longer than a row, and attention never crosses a sample's end."""
    model = recipe.load_model(tiny_lm, CFG, None).to(device)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: B is 0 when fresh, so the LoRA path would add nothing
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    examples = [recipe.render(r, tokenizer, 128) for r in rows(3)]
    examples[0] = recipe.render(
        {**rows(1)[0], "completion": [{"role": "assistant", "content": "A" * 90}]}, tokenizer, 128
    )
    row = 2 * max(len(e.input_ids) for e in examples[1:]) + 1  # two short samples a row
    packed = recipe.pack(examples, tokenizer.pad_token_id, row)
    widths = [len(r) for r in recipe.pack_rows(examples, row)]
    assert len(examples[0].input_ids) > row and packed["input_ids"].shape[0] < len(examples) and max(widths) > 1
    real = (packed["seq"] >= 0).sum(dim=1)
    assert all(n <= row for n in real.tolist() if n != len(examples[0].input_ids))

    def measured(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        model.zero_grad()
        per_sample = recipe.sequence_logprobs(model, batch)
        recipe.sft_loss(model, batch).backward()
        return per_sample.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    alone, alone_grads = measured(recipe.collate(examples, tokenizer.pad_token_id))
    together, together_grads = measured(packed)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    for name, grad in alone_grads.items():
        torch.testing.assert_close(together_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Without the restart, a sample would attend to the one before it in its row: the test can tell.
    flat = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])}
    flat = {k: v.to(device) for k, v in flat.items()}
    with torch.no_grad():
        assert not torch.allclose(recipe.sequence_logprobs(model, flat), alone, atol=1e-3)


def test_quantization_auto_counts_the_parameters_from_the_files(tiny_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert recipe.parameter_count(tiny_lm) == sum(p.numel() for p in model.state_dict().values())
    auto = CFG.model_copy(update={"quantization": "auto"})
    assert not recipe.use_nf4(auto, tiny_lm)  # on CPU never; on CUDA the tiny model's bf16 weights fit


def test_packed_training_runs_and_learns(tiny_lm, tokenizer):
    cfg = CFG.model_copy(update={"packing": "on", "epochs": 15})
    model = recipe.load_model(tiny_lm, cfg, None)
    examples = [recipe.render(r, tokenizer, 128) for r in rows()]
    result = recipe.train(model, examples, cfg, tokenizer.pad_token_id)
    assert result.losses[-1] < 0.6 * result.losses[0], result.losses[::5]
    assert result.tokens == sum(len(e.input_ids) for e in examples) * 15  # every sample once an epoch


def test_lora_learns_a_memorisable_set_and_leaves_the_base_alone(tiny_lm, tokenizer):
    model = recipe.load_model(tiny_lm, CFG, None)
    base_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" in k}
    examples = [recipe.render(r, tokenizer, 128) for r in rows()]
    result = recipe.train(model, examples, CFG, tokenizer.pad_token_id)
    assert result.losses[-1] < 0.6 * result.losses[0], result.losses[::10]
    after = dict(model.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in base_before.items())
    assert any(not torch.equal(after[k], v) for k, v in lora_before.items())
    assert result.tokens == sum(len(e.input_ids) for e in examples) * 30


def test_training_from_a_parent_starts_exactly_where_the_parent_is(tiny_lm, tokenizer, tmp_path):
    model = recipe.load_model(tiny_lm, CFG.model_copy(update={"epochs": 3}), None)
    recipe.train(
        model,
        [recipe.render(r, tokenizer, 128) for r in rows()],
        CFG.model_copy(update={"epochs": 3}),
        tokenizer.pad_token_id,
    )
    recipe.save(model, tmp_path / "parent", {"version": "v0001"})
    ids = tokenizer("Where is my order?", return_tensors="pt")["input_ids"]
    parent = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), tmp_path / "parent").eval()
    child = recipe.load_model(tiny_lm, CFG, tmp_path / "parent").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    with torch.no_grad():
        assert torch.allclose(child(ids).logits, parent(ids).logits, atol=1e-6)
        assert not torch.allclose(child(ids).logits, base(ids).logits, atol=1e-3)
    assert any(p.requires_grad for n, p in child.named_parameters() if "lora_" in n)
    assert gates.check_artifact(tmp_path / "parent")["ok"]


def test_kto_steps_hold_both_classes_and_every_sample_once(tokenizer):
    examples = [recipe.render(r, tokenizer, 128) for r in rows(undesirable=True)]
    examples = examples + [e for e in examples if e.desirable]  # 2:1 desirable
    steps = recipe.steps(examples, 256, 0, mixed=True)
    assert all({e.desirable for b in s for e in b} == {True, False} for s in steps)
    assert all(len({e.desirable for e in b}) == 1 for s in steps for b in s)  # micro-batches: one class each
    assert sorted(id(e) for s in steps for b in s for e in b) == sorted(id(e) for e in examples)
    assert [len(s) for s in recipe.steps(examples, 256, 0, mixed=False)] == [1] * len(recipe.bucketed(examples, 256, 0))


def test_kto_pairs_are_the_prompt_with_another_samples_answer(tokenizer):
    examples = [recipe.render(r, tokenizer, 128) for r in rows(undesirable=True)]
    recipe.with_kl_pairs(examples, 128, 0)
    answers = {tuple(t for t, l in zip(e.input_ids, e.labels) if l != recipe.IGNORE) for e in examples}
    for e in examples:
        prompt = [t for t, l in zip(e.input_ids, e.labels) if l == recipe.IGNORE]
        assert e.kl.input_ids[: len(prompt)] == prompt and e.kl.labels[: len(prompt)] == [recipe.IGNORE] * len(prompt)
        assert (
            tuple(e.kl.input_ids[len(prompt) :]) in answers
            and e.kl.labels[len(prompt) :] == e.kl.input_ids[len(prompt) :]
        )
    assert sum(e.kl.input_ids != e.input_ids for e in examples) >= len(examples) // 2  # mostly mismatched


# A learning rate 50x the product's (2e-4) so that ten epochs move the tiny model a long way. Over 30 seeds
# this run ends with desirable answers +32..+45 nats and undesirable ones -19..-54 against the reference;
# the code before issue 17 (z0 from matched pairs, one-class batches) ended some seeds at -4 for the
# undesirable ones (at 3e-2: desirable answers collapsed to -331 on one machine).
KTO = CFG.model_copy(update={"objective": "kto", "epochs": 10, "learning_rate": 1e-2})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kto_raises_desirable_and_lowers_undesirable_answers(tiny_lm, tokenizer, seed):
    examples = [recipe.render(r, tokenizer, 128) for r in rows(undesirable=True)]
    examples = examples + [e for e in examples if e.desirable]  # 2:1 desirable
    assert recipe.kto_weights(examples) == (0.5, 1.0)
    cfg = KTO.model_copy(update={"seed": seed})
    model = recipe.load_model(tiny_lm, cfg, None)
    result = recipe.train(model, examples, cfg, tokenizer.pad_token_id)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    model.eval()
    batch = recipe.collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        delta = recipe.sequence_logprobs(model, batch) - torch.tensor([e.ref_logp for e in examples])
    good = torch.tensor([e.desirable for e in examples])
    assert delta[good].mean() > 10 and delta[~good].mean() < -10, (delta[good].mean(), delta[~good].mean())


def test_nf4_quantized_training_runs_on_cpu(tiny_lm, tokenizer):
    cfg = CFG.model_copy(update={"quantization": "nf4", "epochs": 2})
    assert recipe.use_nf4(cfg)
    model = recipe.load_model(tiny_lm, cfg, None)
    assert any("Linear4bit" in type(m).__name__ for m in model.modules())
    result = recipe.train(model, [recipe.render(r, tokenizer, 128) for r in rows(1)], cfg, tokenizer.pad_token_id)
    assert result.steps > 0 and all(torch.isfinite(torch.tensor(result.losses)))


def test_split_cuts_a_batch_in_order_under_the_limit(tokenizer):
    import random

    rng = random.Random(0)
    batch = [recipe.Example(list(range(rng.randint(5, 60))), [1] * 5, True, str(i)) for i in range(40)]
    batch.append(recipe.Example(list(range(150)), [1] * 5, True, "long"))
    for packed in (False, True):
        parts = recipe.split(batch, 100, packed)
        assert [e for p in parts for e in p] == batch and len(parts) > 5
        cost = [
            sum(len(e.input_ids) for e in p) if packed else max(len(e.input_ids) for e in p) * len(p) for p in parts
        ]
        assert all(c <= 100 or len(p) == 1 for c, p in zip(cost, parts))
        assert [e.sample_id for e in parts[-1]] == ["long"]  # longer than the limit: a part of its own
    assert recipe.split(batch, 0, False) == [batch] and recipe.split([], 100, True) == []


def adapter(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("objective", ["sft", "kto"])
@pytest.mark.parametrize("packing", ["off", "on"])
def test_a_batch_cut_into_passes_trains_the_same_adapter(tiny_lm, tokenizer, objective, packing):
    """micro_tokens (on CUDA sized from free memory) cuts each batch into passes whose gradients add up:
    the same steps, the same adapter, in fp32, as whole batches."""
    cfg = CFG.model_copy(update={"objective": objective, "packing": packing, "epochs": 3, "learning_rate": 1e-2})
    examples = [recipe.render(r, tokenizer, 128) for r in rows(undesirable=objective == "kto")]
    limit = 2 * max(len(e.input_ids) for e in examples)  # two samples a pass
    trained, results = [], []
    for micro in (0, limit):
        run = cfg.model_copy(update={"micro_tokens": micro})
        model = recipe.load_model(tiny_lm, run, None)
        results.append(recipe.train(model, examples, run, tokenizer.pad_token_id))
        trained.append(adapter(model))
    whole, cut = results
    assert cut.steps == whole.steps and 0 < cut.micro_tokens <= limit < whole.micro_tokens
    torch.testing.assert_close(torch.tensor(cut.losses), torch.tensor(whole.losses), rtol=1e-5, atol=1e-6)
    fresh = adapter(recipe.load_model(tiny_lm, cfg, None))
    for name, weight in trained[0].items():
        torch.testing.assert_close(trained[1][name], weight, rtol=0, atol=1e-5, msg=name)
    assert any(not torch.equal(trained[0][n], w) for n, w in fresh.items())  # training moved the adapter


def test_gradient_checkpointing_recomputes_the_layers_and_trains_the_same_adapter(tiny_lm, tokenizer):
    cfg = CFG.model_copy(update={"epochs": 2, "lora": CFG.lora.model_copy(update={"dropout": 0.2})})
    examples = [recipe.render(r, tokenizer, 128) for r in rows()]
    trained, calls = [], []
    for mode in ("off", "on"):
        model = recipe.load_model(tiny_lm, cfg, None)
        layer = model.get_base_model().model.layers[0].mlp  # inside the checkpointed layer
        count: list[int] = []
        layer.register_forward_pre_hook(lambda *_, seen=count: seen.append(1))  # its start: the recompute stops early
        result = recipe.train(model, examples, cfg.model_copy(update={"gradient_checkpointing": mode}), 0)
        assert result.checkpointing == (mode == "on")
        trained.append(adapter(model))
        calls.append(len(count) / result.steps)
    assert calls == [1, 2]  # checkpointed: each layer runs again in the backward pass
    for name, weight in trained[0].items():  # the recomputation draws the same dropout masks
        torch.testing.assert_close(trained[1][name], weight, rtol=0, atol=1e-5, msg=name)


def test_the_pass_size_is_what_free_memory_holds_after_the_optimizer():
    gib = 2**30
    assert recipe.fitting_tokens(10 * gib, 1e6, 0, 4096) == 4096  # the whole step fits
    assert recipe.fitting_tokens(10 * gib, 1e6, 0, 100_000) == int(0.9 * 10 * gib / 1e6)
    assert recipe.fitting_tokens(10 * gib, 1e6, gib // 12, 100_000) == int((0.9 * 10 - 1) * gib / 1e6)
    assert recipe.fitting_tokens(gib, 1e6, gib, 4096) == 0 and recipe.fitting_tokens(gib, float("inf"), 0, 9) == 0


@pytest.mark.gpu
def test_on_cuda_the_probe_sizes_passes_and_checkpoints_only_when_a_row_does_not_fit(tiny_lm, tokenizer, monkeypatch):
    examples = [recipe.render(r, tokenizer, 128) for r in rows()]
    limit, checkpointing = recipe.plan_memory(recipe.load_model(tiny_lm, CFG, None), examples, CFG, 0)
    assert limit == CFG.tokens_per_batch and not checkpointing  # the tiny model: all fits, no recomputation
    model = recipe.load_model(tiny_lm, CFG, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    off, row = recipe.probe_bytes_per_token(model, examples, CFG, 0)
    recipe.set_checkpointing(model, True)
    on, _ = recipe.probe_bytes_per_token(model, examples, CFG, 0)
    assert on < off
    total = torch.cuda.mem_get_info()[1]
    between = int((12 * trainable + (on + off) / 2 * row) / 0.9)  # fault: a row fits only checkpointed
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (between, total))
    limit, checkpointing = recipe.plan_memory(recipe.load_model(tiny_lm, CFG, None), examples, CFG, 0)
    assert checkpointing and limit >= row
    result = recipe.train(recipe.load_model(tiny_lm, CFG, None), examples, CFG, 0)
    assert result.checkpointing and result.micro_tokens <= limit and result.losses[-1] < result.losses[0]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1024, total))
    with pytest.raises(recipe.DoesNotFit, match="max_seq_len"):
        recipe.plan_memory(recipe.load_model(tiny_lm, CFG, None), examples, CFG, 0)


def test_a_nan_loss_stops_the_run(tiny_lm, tokenizer):
    cfg = CFG.model_copy(update={"learning_rate": 1e30, "epochs": 20})
    model = recipe.load_model(tiny_lm, cfg, None)
    with pytest.raises(recipe.BadLoss, match="loss is"):
        recipe.train(model, [recipe.render(r, tokenizer, 128) for r in rows()], cfg, tokenizer.pad_token_id)


def test_artifact_gate_refuses_empty_unchanged_and_non_finite_adapters(tiny_lm, tmp_path):
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model
    from safetensors.torch import load_file, save_file

    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm), PeftLora(r=4, target_modules="all-linear"))
    fresh.save_pretrained(tmp_path / "empty")
    assert "LoRA B is zero" in gates.check_artifact(tmp_path / "empty")["reason"]
    weights = load_file(tmp_path / "empty" / "adapter_model.safetensors")
    for k in weights:
        if "lora_B" in k:
            weights[k] = torch.full_like(weights[k], 0.01)
    import shutil

    shutil.copytree(tmp_path / "empty", tmp_path / "trained")
    save_file(weights, tmp_path / "trained" / "adapter_model.safetensors")
    assert gates.check_artifact(tmp_path / "trained", rank=4)["ok"]
    assert "unchanged" in gates.check_artifact(tmp_path / "trained", parent=tmp_path / "trained")["reason"]
    assert "rank 8" in gates.check_artifact(tmp_path / "trained", rank=8)["reason"]
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = weights[key] * float("nan")
    save_file(weights, tmp_path / "trained" / "adapter_model.safetensors")
    assert "NaN" in gates.check_artifact(tmp_path / "trained")["reason"]


@pytest.mark.gpu
def test_qlora_nf4_trains_on_cuda(tiny_lm, tokenizer):
    cfg = CFG.model_copy(update={"quantization": "nf4", "epochs": 10})
    assert recipe.use_nf4(cfg) and not recipe.use_nf4(cfg.model_copy(update={"quantization": "auto"}), tiny_lm)
    model = recipe.load_model(tiny_lm, cfg, None)
    assert next(model.parameters()).device.type == "cuda"
    result = recipe.train(model, [recipe.render(r, tokenizer, 128) for r in rows()], cfg, tokenizer.pad_token_id)
    assert result.losses[-1] < result.losses[0]


def test_offline_gate_needs_a_better_candidate_and_bounds_forgetting(tiny_lm, tokenizer, tmp_path):
    from curation import snapshot

    snap = tmp_path / "snap"
    snap.mkdir()
    rows_ = [
        (
            r["sample_id"],
            "u1",
            "desirable" if r["label"] else "undesirable",
            "rating",
            r["prompt"],
            r["completion"][0]["content"],
        )
        for r in rows(2, undesirable=True)
    ]
    snapshot._write(snapshot._table(rows_), snap / "eval.parquet")
    model = recipe.load_model(tiny_lm, CFG, None)
    recipe.train(model, [recipe.render(r, tokenizer, 128) for r in rows()], CFG, tokenizer.pad_token_id)
    recipe.save(model, tmp_path / "trained", {})
    better = gates.offline(tiny_lm, tmp_path / "trained", None, snap, tolerance=100.0)
    assert better["ok"], better
    assert better["candidate"]["desirable_loss"] < better["incumbent"]["desirable_loss"]
    assert better["candidate"]["preference_pairs"] == 8 * 2 and better["candidate"]["preference_accuracy"] == 1.0
    same = gates.offline(tiny_lm, tmp_path / "trained", tmp_path / "trained", snap, tolerance=100.0)
    assert not same["ok"] and "is not below the incumbent" in same["reason"]
    strict = gates.offline(tiny_lm, tmp_path / "trained", None, snap, tolerance=0.0)
    # Memorising four store answers costs the tiny model on general prompts: no tolerance, no pass.
    assert strict["candidate"]["general_loss"] > strict["incumbent"]["general_loss"]
    assert not strict["ok"] and "general-prompt loss rose" in strict["reason"]


def test_replay_mixes_in_the_configured_share_of_earlier_samples():
    now = [{"sample_id": f"n{i}"} for i in range(80)]
    earlier = [[{"sample_id": f"e{i}"} for i in range(100)], [{"sample_id": "n1"}]]  # n1 is not replayed twice
    mixed = recipe.with_replay(now, earlier, 0.2, seed=0)
    replayed = [r for r in mixed if r["sample_id"].startswith("e")]
    assert len(replayed) == 20 and len(mixed) == 100  # 20% of what is trained on
    assert mixed == recipe.with_replay(now, earlier, 0.2, seed=0)  # seeded
    assert recipe.with_replay(now, earlier, 0.0, seed=0) == now


def test_reading_a_snapshot_leaves_no_copy_outside_the_data_dir(db, scrub_pool, tmp_path, monkeypatch):
    """`forget` deletes a snapshot's Parquet files; an Arrow copy in the Hugging Face cache would outlive it."""
    import datasets

    from curation import curate, snapshot
    from curation.config import CurationConfig
    from retrain.recipe import load_rows
    from tests.helpers.events import population, store

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    store(db, population(users=80), scrub_pool.scrub)
    cfg = CurationConfig(review_policy="auto", eval_share=0.2, seed=7)
    curate.run(db, cfg)
    snap = snapshot.build(db, cfg, tmp_path / "snapshots")
    rows = load_rows(snap.path, "train")
    assert len(rows) == snap.manifest["counts"]["train"] > 0 and {"prompt", "completion", "label"} <= set(rows[0])
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
