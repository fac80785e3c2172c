"""The training recipe, top to bottom: snapshot -> tokens -> batches -> model -> LoRA -> loop -> adapter.

1. Load an approved snapshot (Parquet, read in place) and replay a share of samples from earlier snapshots.
2. Render every sample with the model's chat template; the loss is on the assistant's tokens only.
3. Bucket by length under a token budget, so little compute goes to padding. A KTO step takes a
   length-bucketed micro-batch of each class (desirable, undesirable), never one class alone.
4. Load the base model: on CUDA bf16 weights where they fit (half the free GPU memory), else QLoRA (nf4,
   double quantization, bf16 compute); plain LoRA in fp32 on CPU. Start from the production adapter's
   weights when there is one. On CUDA a probe pass sizes each forward/backward from the free memory
   (a batch larger than that is cut and its gradients added up) and switches gradient checkpointing on
   only when not even one row fits without it.
5. Train: SFT on desirable answers, or KTO on desirable and undesirable ones. The output head runs only
   on the positions that have a label (the answer), not on the prompt: on a 135M model with a 49k
   vocabulary the head is a fifth of the compute.
6. Save the adapter as PEFT files (loadable by peft and vLLM as they are) with a manifest.

Why our own loop rather than TRL's trainers: a token-budget bucketed sampler, the head on labelled
positions only and KTO's reference log-probabilities computed once up front (no second model in memory)
are each a few lines here and would each be a subclass there. The KTO loss is TRL's `loss_type="kto"`
(Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306, eq. 7), checked against TRL's trainer on the
same batch in tests/retrain/test_kto_vs_trl.py: the same per-example losses, the reference point z0 the
same estimate of KL(policy || reference) (the mean log-ratio of mismatched prompt/answer pairs under
the policy, detached, clamped at 0), and every optimizer step sees desirable and undesirable answers.

Two earlier shortcuts broke that on some machines (issue 17): z0 was a running mean of the *matched*
log-ratios, which is the implied reward, not a KL: it rose with every desirable answer learned and made
each undesirable one look too likely; and length bucketing put the short undesirable answers into
batches of their own, so a step only pushed down. One such step could drag the shared tokens (".", the
end of turn) of the desirable answers so far down that their sigmoid saturated (beta * logratio < -5),
their gradient vanished and they never came back: -331 nats on one machine, +30 on another.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from retrain.config import RetrainConfig

log = logging.getLogger("flywheel.retrain")
IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt
    desirable: bool
    sample_id: str
    ref_logp: float | None = None  # KTO: log-probability of the answer under the starting weights
    kl: Example | None = None  # KTO: this prompt with another sample's answer, for the estimate of z0

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class Result:
    steps: int = 0
    tokens: int = 0  # real (non-padding) tokens seen
    label_tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    first_step_s: float = 0.0  # the first step alone: kernels chosen, memory allocated (and compiled, if so)
    first_step_tokens: int = 0
    micro_tokens: int = 0  # the most tokens a forward/backward pass took (0: whole batches)
    checkpointing: bool = False  # gradient checkpointing was on

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def steady_tokens_per_s(self) -> float:
        """Tokens per second after the first step."""
        rest = self.seconds - self.first_step_s
        return (self.tokens - self.first_step_tokens) / rest if rest > 0 else self.tokens_per_s


class BadLoss(RuntimeError):
    """The loss became NaN or infinite: the run fails and nothing is saved."""


class DoesNotFit(RuntimeError):
    """Not even one row of max_seq_len tokens fits in the free GPU memory: the run fails before training."""


# 1. Data ---------------------------------------------------------------------------------------------------


def load_rows(snapshot_dir: Path, split: str) -> list[dict]:
    """The snapshot's rows, read straight from its Parquet file: `datasets.load_dataset` would leave an Arrow
    copy of every snapshot in the Hugging Face cache (outside the data dir, out of `forget`'s reach)."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(snapshot_dir) / f"{split}.parquet").to_pylist()


def at_most(rows: list[dict], limit: int, seed: int | str) -> list[dict]:
    """`limit` of `rows` (a seeded random choice, in their order), or all of them when fewer or `limit` is 0."""
    if not limit or len(rows) <= limit:
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), limit))
    return [r for i, r in enumerate(rows) if i in keep]


def with_replay(
    rows: list[dict], earlier: list[list[dict]], share: float, seed: int, exclude: frozenset[str] = frozenset()
) -> list[dict]:
    """Add replayed samples from earlier snapshots so that they are `share` of the result, leaving out those in
    `exclude` (superseded: users now reject their answer, so replay must not teach it again)."""
    have = {x["sample_id"] for x in rows} | exclude
    pool = [r for rs in earlier for r in rs if r["sample_id"] not in have]
    want = min(len(pool), int(round(len(rows) * share / (1 - share)))) if share > 0 else 0
    return rows + random.Random(seed).sample(pool, want)


# 2. Tokens -------------------------------------------------------------------------------------------------


def render(row: dict, tokenizer, max_len: int) -> Example:
    """Chat template over prompt + answer; labels only on the answer (and its end-of-turn token)."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
    answer = [{"role": "assistant", "content": row["completion"][0]["content"]}]
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)["input_ids"]
    if full[: len(head)] != head:  # a template that rewrites earlier turns: fall back to concatenation
        full = (
            head + tokenizer(answer[0]["content"] + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        )
    labels = [IGNORE] * len(head) + full[len(head) :]
    if len(full) > max_len:  # keep the answer; cut the prompt from the left
        cut = len(full) - max_len
        full, labels = full[cut:], labels[cut:]
    return Example(full, labels, bool(row["label"]), row["sample_id"])


# 3. Batches ------------------------------------------------------------------------------------------------


def bucketed(examples: list[Example], tokens_per_batch: int, seed: int) -> list[list[Example]]:
    """Shuffle, sort by length inside windows of ~64 batches, cut batches under the token budget (padded
    size), shuffle the batches: every batch holds sequences of similar length."""
    rng = random.Random(seed)
    order = examples[:]
    rng.shuffle(order)
    batches: list[list[Example]] = []
    window = max(64, 64 * tokens_per_batch // max(1, max(len(e.input_ids) for e in order)))
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda e: len(e.input_ids))
        batch: list[Example] = []
        for e in chunk:
            longest = max([len(e.input_ids)] + [len(x.input_ids) for x in batch])
            if batch and longest * (len(batch) + 1) > tokens_per_batch:
                batches.append(batch)
                batch = []
            batch.append(e)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def filled(examples: list[Example], tokens_per_batch: int, seed: int) -> list[list[Example]]:
    """Shuffled, cut into batches of at most `tokens_per_batch` real tokens: packed rows pad nothing but a
    row's tail, so batches need no sorting by length."""
    order = examples[:]
    random.Random(seed).shuffle(order)
    batches: list[list[Example]] = [[]]
    size = 0
    for e in order:
        if batches[-1] and size + len(e.input_ids) > tokens_per_batch:
            batches.append([])
            size = 0
        batches[-1].append(e)
        size += len(e.input_ids)
    return batches if batches[0] else []


def steps(
    examples: list[Example], tokens_per_batch: int, seed: int, mixed: bool, packed: bool = False
) -> list[list[list[Example]]]:
    """The optimizer steps of one epoch, each a list of micro-batches: length-bucketed (`bucketed`), or for
    packed rows cut by real tokens (`filled`).

    Plain: one micro-batch a step. Mixed (KTO): desirable and undesirable samples are batched apart,
    each under its share of the token budget, and every step takes micro-batches of both, so no step
    pushes only one way and no padding is spent on joining a short answer to a long one."""
    cut = filled if packed else bucketed
    good = [e for e in examples if e.desirable]
    bad = [e for e in examples if not e.desirable]
    if not mixed or not good or not bad:
        return [[b] for b in cut(examples, tokens_per_batch, seed)]
    share = sum(len(e.input_ids) for e in good) / sum(len(e.input_ids) for e in examples)
    a = cut(good, max(1, round(tokens_per_batch * share)), seed)
    b = cut(bad, max(1, round(tokens_per_batch * (1 - share))), seed + 1)
    n = min(len(a), len(b))  # every batch is used once; the larger class may give a step two
    return [a[k * len(a) // n : (k + 1) * len(a) // n] + b[k * len(b) // n : (k + 1) * len(b) // n] for k in range(n)]


def with_kl_pairs(examples: list[Example], max_len: int, seed: int) -> None:
    """Give every sample its mismatched pair for KTO's KL estimate: its prompt with the answer of another
    sample (a seeded cycle over all samples, as TRL rotates answers within a batch). Fixed for the run, so
    the pairs' reference log-probabilities are computed once, with the matched ones."""
    order = examples[:]
    random.Random(seed).shuffle(order)
    for e, other in zip(order, order[1:] + order[:1]):
        if other is e:  # one sample: no pair, z0 stays 0
            continue
        cut = next(i for i, x in enumerate(e.labels) if x != IGNORE)
        start = next(i for i, x in enumerate(other.labels) if x != IGNORE)
        ids = e.input_ids[:cut] + other.input_ids[start:]
        labels = [IGNORE] * cut + other.labels[start:]
        e.kl = Example(ids[-max_len:], labels[-max_len:], e.desirable, e.sample_id)


def split(batch: list[Example], limit: int, packed: bool) -> list[list[Example]]:
    """A micro-batch cut, in order, into parts of at most `limit` tokens (padded: the longest sample times the
    count; packed: the real tokens), for passes whose gradients add up to the whole's; 0: no limit. A sample
    longer than `limit` is a part of its own."""
    if not limit:
        return [batch] if batch else []
    parts: list[list[Example]] = []
    size = longest = 0
    for e in batch:
        n = len(e.input_ids)
        grown = size + n if packed else max(longest, n) * (len(parts[-1]) + 1 if parts else 1)
        if not parts or grown > limit:
            parts.append([])
            size = longest = 0
        parts[-1].append(e)
        size += n
        longest = max(longest, n)
    return parts


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per example, right-padded. `seq`: the example each position belongs to (-1: padding)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    seq = torch.full((len(batch), width), -1, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
        seq[i, : len(e.input_ids)] = i
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "seq": seq}


def pack_rows(batch: list[Example], row_tokens: int) -> list[list[int]]:
    """First fit, longest first: the examples (indices into `batch`) of each row of at most `row_tokens` (an
    example longer than that has a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(batch)), key=lambda i: -len(batch[i].input_ids)):
        n = len(batch[i].input_ids)
        at = next((r for r, left in enumerate(room) if left >= n), None)
        if at is None:
            rows.append([])
            room.append(row_tokens)
            at = len(rows) - 1
        rows[at].append(i)
        room[at] -= n
    return rows


def pack(batch: list[Example], pad_id: int, row_tokens: int) -> dict[str, torch.Tensor]:
    """The examples end to end in rows of at most `row_tokens` (`pack_rows`), position ids restarting at each:
    no attention mask, so transformers keeps attention inside each example (a block-diagonal causal mask
    built from the position ids; flash-attention's varlen kernel reads them the same way) and no compute is
    spent on padding but a row's tail. An example's first label is IGNORE (its prompt), so the last token
    of one example predicts nothing of the next. `seq` as in `collate`."""
    rows = pack_rows(batch, row_tokens)
    width = max(sum(len(batch[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    seq = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = batch[i]
            n = len(e.input_ids)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            labels[r, at : at + n] = torch.tensor(e.labels)
            positions[r, at : at + n] = torch.arange(n)
            seq[r, at : at + n] = i
            at += n
        positions[r, at:] = torch.arange(width - at)  # the tail: a padding "example" of its own
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "seq": seq}


# 4. Model --------------------------------------------------------------------------------------------------


def use_nf4(cfg: RetrainConfig, base_path: Path | None = None) -> bool:
    """nf4 (QLoRA) when asked, or on auto when CUDA is there and the model's bf16 weights would take more
    than half of the GPU's free memory (`base_path` unknown: assume they would not)."""
    if cfg.quantization != "auto" or not torch.cuda.is_available():
        return cfg.quantization == "nf4"
    if base_path is None:
        return False
    free, _ = torch.cuda.mem_get_info(torch.device(device_of_process()))
    return 2 * parameter_count(base_path) > free / 2


def parameter_count(base_path: Path) -> int:
    """The model's parameters, from its safetensors headers (nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(base_path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                total += math.prod(st.get_slice(key).get_shape())
    return total


def device_of_process() -> str:
    """This process's device: under torchrun, the GPU of its local rank."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def world() -> tuple[int, int]:
    """(rank, processes) of a torchrun group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Summed over the processes of a torchrun group, in place; itself without one."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def uses_packing(cfg: RetrainConfig) -> bool:
    return cfg.packing == "on" or (cfg.packing == "auto" and torch.cuda.is_available())


def load_model(base_path: Path, cfg: RetrainConfig, parent: Path | None):
    """The base model (nf4 or fp32) with a trainable LoRA: the parent's weights, or fresh ones."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    device = device_of_process()
    if use_nf4(cfg, base_path):
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if device == "cuda" else torch.float32
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
        model = AutoModelForCausalLM.from_pretrained(
            base_path, quantization_config=quant, dtype=compute, device_map={"": device}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # train() decides
    else:  # bf16 weights on CUDA (the LoRA weights stay fp32: peft's autocast_adapter_dtype), fp32 on CPU
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device)
    model.config.use_cache = False
    torch.manual_seed(cfg.seed)  # the fresh LoRA A matrices are random: seeded, a run is reproducible
    if parent is not None:
        model = PeftModel.from_pretrained(model, parent, is_trainable=True)
    else:
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


# 5. Loss ---------------------------------------------------------------------------------------------------


def answer_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labels, computing the output head only where there is a label.
    `batch` from `collate` (padded rows, an attention mask) or `pack` (packed rows, position ids).

    Returns (log-probs of the labelled tokens [n], which example each belongs to [n])."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    hidden = inner.model(**inputs).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    examples = batch["seq"][:, 1:][keep]  # position t predicts the label at t + 1, of that token's example
    h = hidden[:, :-1][keep]  # [n, d]: positions that predict a label
    logits = inner.lm_head(h).float()  # [n, vocab]
    logp = torch.log_softmax(logits, dim=-1).gather(1, targets[keep][:, None]).squeeze(1)
    return logp, examples


def sequence_logprobs(model, batch) -> torch.Tensor:
    """The answers' summed log-probabilities, one per example of the batch."""
    logp, examples = answer_logprobs(model, batch)
    n = int(batch["seq"].max()) + 1
    return torch.zeros(n, device=logp.device, dtype=logp.dtype).index_add(0, examples, logp)


def sft_loss(model, batch, tokens: int | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens; `tokens`: the count to divide by when the batch is
    one process's share of a larger one (the mean is then the larger batch's, summed over processes)."""
    logp, _ = answer_logprobs(model, batch)
    return -logp.sum() / (tokens if tokens is not None else logp.numel())


def label_count(batch: list[Example]) -> int:
    """The labelled positions `answer_logprobs` scores (a sample's first token predicts nothing)."""
    return sum(1 for e in batch for x in e.labels[1:] if x != IGNORE)


def kto_losses(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    w_desirable: float,
    w_undesirable: float,
    z0: float,
) -> torch.Tensor:
    """KTO's per-sample losses from the answers' summed log-probabilities (TRL's `loss_type="kto"`)."""
    logratio = logp - ref_logp
    return torch.where(
        desirable,
        w_desirable * (1 - torch.sigmoid(beta * (logratio - z0))),
        w_undesirable * (1 - torch.sigmoid(beta * (z0 - logratio))),
    )


@torch.no_grad()
def kl_estimate(model, step: list[list[Example]], pad_id: int) -> float:
    """KTO's reference point z0 for one step: the mean log(policy / reference) of the step's mismatched
    pairs, clamped at 0 (TRL's estimate). Computed without gradient: z0 is a baseline, not a target."""
    device = next(model.parameters()).device
    rank, size = world()
    total, n = 0.0, 0
    for micro in step:
        pairs = [e.kl for e in micro if e.kl is not None]
        mine = pairs[rank::size]  # under torchrun each process scores its share; the sums add up
        if mine:
            tensors = {k: v.to(device) for k, v in collate(mine, pad_id).items()}
            ref = torch.tensor([p.ref_logp for p in mine], device=device)
            total += float((sequence_logprobs(model, tensors) - ref).sum())
        n += len(pairs)
    total = float(all_sum(torch.tensor([total], dtype=torch.float64, device=device)))
    return max(0.0, total / n) if n else 0.0


def kto_weights(examples: list[Example]) -> tuple[float, float]:
    """Class weights from the observed up/down balance: lambda_D * n_D = lambda_U * n_U (the KTO paper
    recommends lambda_D n_D / lambda_U n_U in [1, 4/3]; we take 1), undesirable weight 1."""
    n_d = sum(e.desirable for e in examples)
    n_u = len(examples) - n_d
    return (n_u / n_d if n_d and n_u else 1.0), 1.0


@torch.no_grad()
def reference_logprobs(model, examples: list[Example], pad_id: int, tokens_per_batch: int) -> None:
    """KTO's reference: the answers' log-probabilities under the starting weights, computed once."""
    model.eval()
    device = next(model.parameters()).device
    for batch in bucketed(examples, tokens_per_batch, 0):
        tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
        for e, lp in zip(batch, sequence_logprobs(model, tensors).tolist()):
            e.ref_logp = lp
    model.train()


# 6. Memory --------------------------------------------------------------------------------------------------


def probe_bytes_per_token(model, examples: list[Example], cfg: RetrainConfig, pad_id: int) -> tuple[float, int]:
    """CUDA: the GPU memory one forward/backward pass takes per token (activations and gradients, over what
    is allocated before), measured on a row of the longest samples; and the row's tokens. inf on OOM."""
    device = next(model.parameters()).device
    row: list[Example] = []
    taken = 0
    for e in sorted(examples, key=lambda e: -len(e.input_ids)):
        if row and taken + len(e.input_ids) > cfg.max_seq_len:
            break
        row.append(e)
        taken += len(e.input_ids)
    made = pack(row, pad_id, cfg.max_seq_len) if uses_packing(cfg) else collate(row, pad_id)
    tensors = {k: v.to(device) for k, v in made.items()}
    tokens = tensors["input_ids"].numel()  # padding included, as `split` counts a padded part
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        sft_loss(model, tensors).backward()
        used: float = torch.cuda.max_memory_allocated(device) - before
    except torch.cuda.OutOfMemoryError:
        used = math.inf
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return used / tokens, tokens


def fitting_tokens(free: int, per_token: float, trainable: int, step: int) -> int:
    """The tokens a pass may take: what 90% of the free memory holds at `per_token` bytes each, after the
    optimizer's fp32 state and gradients of the trainable parameters (12 bytes each), at most a step's."""
    room = 0.9 * free - 12 * trainable
    return max(0, min(step, int(room / per_token))) if math.isfinite(per_token) and room > 0 else 0


def set_checkpointing(model, on: bool) -> None:
    """Gradient checkpointing of every decoder layer (non-reentrant: it keeps dropout's random draws and
    needs no gradient on the inputs); a model is loaded without it."""
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def plan_memory(model, examples: list[Example], cfg: RetrainConfig, pad_id: int) -> tuple[int, bool]:
    """(tokens a pass may take, 0 for whole batches; gradient checkpointing on). On CPU: what the config
    says. On CUDA, for micro_tokens 0 or checkpointing auto: the probe, the limit the smallest over a
    torchrun group's processes. Raises DoesNotFit when one probe row does not fit even checkpointed."""
    device = next(model.parameters()).device
    checkpointing = cfg.gradient_checkpointing == "on"
    set_checkpointing(model, checkpointing)
    if device.type != "cuda" or (cfg.micro_tokens and cfg.gradient_checkpointing != "auto"):
        return cfg.micro_tokens, checkpointing
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step = max(cfg.tokens_per_batch, cfg.max_seq_len)
    while True:
        per_token, row = probe_bytes_per_token(model, examples, cfg, pad_id)
        fits = fitting_tokens(torch.cuda.mem_get_info(device)[0], per_token, trainable, step)
        if fits >= row or checkpointing or cfg.gradient_checkpointing == "off":
            break
        checkpointing = True  # auto: only now, when a row does not fit without it
        set_checkpointing(model, checkpointing)
    if world()[1] > 1:  # every process cuts alike (and fails alike)
        import torch.distributed as dist

        agreed = torch.tensor([fits], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        fits = int(agreed)
    if fits < row:
        free = torch.cuda.mem_get_info(device)[0]
        need = f"needs {per_token * row / 2**30:.1f} GiB" if math.isfinite(per_token) else "ran out of memory"
        raise DoesNotFit(
            f"a training pass on one row of {row} tokens {need}; {free / 2**30:.1f} GiB of GPU memory are "
            f"free (gradient checkpointing {'on' if checkpointing else 'off'}): lower retrain.max_seq_len (on bf16 "
            "weights, or set retrain.quantization = 'nf4')"
        )
    limit = min(cfg.micro_tokens, fits) if cfg.micro_tokens else fits
    log.info(
        "memory: %.0f KiB a token, %d tokens a pass, gradient checkpointing %s",
        per_token / 1024, limit, "on" if checkpointing else "off",
    )  # fmt: skip
    return limit, checkpointing


# 7. Loop ---------------------------------------------------------------------------------------------------


def train(
    model,
    examples: list[Example],
    cfg: RetrainConfig,
    pad_id: int,
    progress: Callable[[int, int, float, float], None] | None = None,
) -> Result:
    """The optimisation loop; raises BadLoss on a NaN/inf loss (nothing is saved then), DoesNotFit when
    a pass cannot fit in GPU memory."""
    device = next(model.parameters()).device
    kto = cfg.objective == "kto"
    if not kto:
        examples = [e for e in examples if e.desirable]
    if not examples:
        raise ValueError("no training samples for this objective")
    # Before seeding: the probe's dropout draws are not the run's.
    limit, checkpointing = plan_memory(model, examples, cfg, pad_id)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if kto:
        # Policy and reference log-probabilities must be comparable: no dropout (TRL's disable_dropout).
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        with_kl_pairs(examples, cfg.max_seq_len, cfg.seed)
        reference_logprobs(model, examples + [e.kl for e in examples if e.kl], pad_id, cfg.tokens_per_batch)
        w_d, w_u = kto_weights(examples)
    packed = uses_packing(cfg)
    epochs = max(1, math.ceil(cfg.epochs))
    plan = [s for ep in range(epochs) for s in steps(examples, cfg.tokens_per_batch, cfg.seed + ep, kto, packed)]
    plan = plan[: max(1, int(len(plan) * cfg.epochs / epochs))]
    if cfg.max_steps:
        plan = plan[: cfg.max_steps]
    params = [p for p in model.parameters() if p.requires_grad]
    rank, size = world()
    if size > 1:  # one starting point for every process (seeded alike already: this makes it so)
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, 0)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    warmup = max(1, len(plan) // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (len(plan) - s) / max(1, len(plan) - warmup)))
    )
    model.train()
    result = Result(checkpointing=checkpointing)
    started = time.perf_counter()
    for step, micros in enumerate(plan, 1):
        z0 = kl_estimate(model, micros, pad_id) if kto else 0.0
        n = sum(len(b) for b in micros)
        value = torch.zeros(1, dtype=torch.float64, device=device)
        for whole in micros:  # gradients add up over the step's micro-batches: the loss is the step's mean
            share = whole[rank::size]  # under torchrun: this process's share; the gradients are summed below
            for batch in split(share, limit, packed):  # parts that fit in memory; their gradients add up
                made = pack(batch, pad_id, cfg.max_seq_len) if packed else collate(batch, pad_id)
                tensors = {k: v.to(device) for k, v in made.items()}
                result.micro_tokens = max(result.micro_tokens, tensors["input_ids"].numel())
                if kto:
                    ref = torch.tensor([e.ref_logp for e in batch], device=device)
                    desirable = torch.tensor([e.desirable for e in batch], device=device)
                    logp = sequence_logprobs(model, tensors)
                    loss = kto_losses(logp, ref, desirable, cfg.kto_beta, w_d, w_u, z0).sum() / n
                else:
                    loss = sft_loss(model, tensors, label_count(whole)) * len(whole) / n
                value += loss.detach()
                loss.backward()
        if size > 1:  # DDP's all-reduce, by hand: the adapter's gradients are small, and summed (not averaged)
            for p in params:  # they are the one-process gradient of the step's mean loss
                if p.grad is None:  # this process had no share of the step
                    p.grad = torch.zeros_like(p)
                all_sum(p.grad)
        value_f = float(all_sum(value))
        if not math.isfinite(value_f):
            raise BadLoss(f"loss is {value_f} at step {step}")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        result.steps = step
        result.tokens += sum(len(e.input_ids) for b in micros for e in b)
        result.label_tokens += sum(e.n_labels for b in micros for e in b)
        result.losses.append(value_f)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the clock counts finished work (one wait a step)
        result.seconds = time.perf_counter() - started
        if step == 1:
            result.first_step_s, result.first_step_tokens = result.seconds, result.tokens
        if progress:
            progress(step, len(plan), value_f, result.tokens_per_s)
    return result


def save(model, out: Path, manifest: dict) -> None:
    """PEFT files as they are (adapter_config.json + adapter_model.safetensors) and our manifest."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "flywheel-adapter.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
