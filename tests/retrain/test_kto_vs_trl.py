"""The recipe's KTO against TRL's own KTOTrainer on the same batch: tokens, reference log-probabilities,
KL estimate (z0), loss and every LoRA gradient agree within 1e-4 (fp32, the tiny Llama)."""

import pytest
import torch
import trl  # a dev dependency, pinned in the lock: a missing one is a broken install, not a skip
from transformers import AutoTokenizer

from retrain import recipe
from retrain.config import LoraConfig, RetrainConfig

QA = [
    ("Where is my order?", "It ships on Tuesday.", "No."),
    ("Can I return shoes?", "Yes, within 30 days.", "Never."),
    ("What warranty do headphones have?", "One year.", "None at all."),
    ("Do you ship on weekends?", "Orders ship in 2 days.", "We do not ship."),
]
BATCH = 8
BETA, W_D, W_U = 0.1, 0.5, 1.0


def rows():
    out = []
    for i, (q, good, bad) in enumerate(QA * 2):
        out.append(
            {
                "sample_id": f"g{i}",
                "label": True,
                "prompt": [{"role": "user", "content": q}],
                "completion": [{"role": "assistant", "content": good}],
            }
        )
        if i % 2 == 0:  # 2:1 desirable, so the class weights matter
            out.append(
                {
                    "sample_id": f"b{i}",
                    "label": False,
                    "prompt": [{"role": "user", "content": q}],
                    "completion": [{"role": "assistant", "content": bad}],
                }
            )
    return out


@pytest.fixture
def trainer_and_model(tiny_lm, tmp_path):
    import datasets

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    cfg = RetrainConfig(quantization="none", lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    model = recipe.load_model(tiny_lm, cfg, None)
    data = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "label")} for r in rows()])
    args = trl.KTOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=BATCH,
        beta=BETA,
        desirable_weight=W_D,
        undesirable_weight=W_U,
        precompute_ref_log_probs=True,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        bf16=False,
    )  # TRL's default autocasts its reference pass to bf16, even on CPU
    trainer = trl.KTOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    return trainer, model, tokenizer


def moved(model):
    """Move the trained adapter away from the reference (TRL keeps a copy as its 'ref' adapter)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".default." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def examples_from(batch, ids="input_ids", mask="attention_mask", completion="completion_mask"):
    """TRL's padded rows back into the recipe's Examples (labels on the completion tokens)."""
    out = []
    for i in range(batch[ids].shape[0]):
        keep = batch[mask][i].bool()
        tokens = batch[ids][i][keep].tolist()
        labels = [t if c else recipe.IGNORE for t, c in zip(tokens, batch[completion][i][keep].tolist())]
        out.append(recipe.Example(tokens, labels, bool(batch["label"][i]), str(i)))
    return out


def test_render_and_reference_logprobs_match_trl(trainer_and_model):
    trainer, model, tokenizer = trainer_and_model
    data = trainer.train_dataset
    mine = [recipe.render(r, tokenizer, 512) for r in rows()]
    assert [e.input_ids for e in mine] == [p + c for p, c in zip(data["prompt_ids"], data["completion_ids"])]
    assert [e.n_labels for e in mine] == [len(c) for c in data["completion_ids"]]
    recipe.reference_logprobs(model, mine, tokenizer.pad_token_id, 4096)
    assert torch.allclose(torch.tensor([e.ref_logp for e in mine]), torch.tensor(data["ref_logps"]), atol=1e-4)


def test_loss_kl_estimate_and_gradients_match_trl(trainer_and_model):
    trainer, model, tokenizer = trainer_and_model
    moved(model)
    batch = next(iter(trainer.get_train_dataloader()))
    assert 0 < int(batch["label"].sum()) < BATCH  # both classes in the batch
    model.train()
    trl_loss = trainer.compute_loss(model, batch)
    trl_loss.backward()
    trl_kl = trainer._metrics["train"]["kl"][-1]
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    examples = examples_from(batch)
    pairs = examples_from(batch, "KL_input_ids", "KL_attention_mask", "KL_completion_mask")
    for e, pair, ref, ref_kl in zip(examples, pairs, batch["ref_logps"].tolist(), batch["ref_KL_logps"].tolist()):
        e.ref_logp, pair.ref_logp, e.kl = ref, ref_kl, pair
    z0 = recipe.kl_estimate(model, [examples], tokenizer.pad_token_id)
    assert z0 > 0, "the moved adapter should have a positive KL estimate: the comparison would not test z0"
    assert z0 == pytest.approx(trl_kl, abs=1e-4)
    tensors = recipe.collate(examples, tokenizer.pad_token_id)
    losses = recipe.kto_losses(
        recipe.sequence_logprobs(model, tensors),
        torch.tensor([e.ref_logp for e in examples]),
        torch.tensor([e.desirable for e in examples]),
        BETA,
        W_D,
        W_U,
        z0,
    )
    loss = losses.mean()
    loss.backward()
    assert float(loss) == pytest.approx(float(trl_loss), abs=1e-4)
    mine = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert mine.keys() == trl_grads.keys() and len(mine) > 0
    worst = max(float((mine[n] - trl_grads[n]).abs().max()) for n in mine)
    assert worst < 1e-4, worst
    assert max(float(g.abs().max()) for g in mine.values()) > 1e-3  # the gradients compared are not all ~0
