"""One training run, as a subprocess of the control process: `python -m retrain.worker JOB.json`, or with
`retrain.gpus` > 1 under `torchrun` (one process per GPU; gloo processes on CPU where there is no CUDA):
every process trains on its share of each step and the gradients are summed (`recipe.train`); process 0
writes the adapter and prints the metrics.

Reads the job (paths, versions, config), trains with the recipe and writes the adapter into the job's
staging folder. It touches neither the database nor the registry: the control process decides what the
result is worth. Exit 0 with the adapter written; otherwise a non-zero code and a last stderr line
`flywheel-retrain-failed: <reason>`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from retrain.plan import Job

FAILED = "flywheel-retrain-failed: "


def _bar():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("training {task.fields[version]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[tps]:,.0f} tokens/s"),
        TimeElapsedColumn(),
        transient=False,
        disable=not sys.stderr.isatty(),
    )


def _manifest(job: Job, rows: list[dict], metrics: dict) -> dict:
    """What the adapter folder says about itself: lineage to the base, the snapshot and every sample id."""
    return {
        "version": job.version, "parent": job.parent_version, "base_model": job.base_model,
        "base_hash": job.base_hash, "snapshot_id": job.snapshot_id, "snapshot_hash": job.snapshot_hash,
        "sample_ids": sorted({r["sample_id"] for r in rows}), "config": job.config.model_dump(mode="json"),
        "seed": job.config.seed, "metrics": metrics, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip


def run(job: Job) -> dict:
    import torch
    from transformers import AutoTokenizer

    from retrain import probe, recipe

    cfg = job.config
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(job.base_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = recipe.load_rows(Path(job.snapshot_dir), "train")
    earlier = [recipe.load_rows(Path(d), "train") for d in job.earlier_snapshots]
    # Incremental: from a parent, train on what its lineage has not learned, plus the replay share of what
    # it has (this snapshot's older samples and earlier snapshots'), so a night costs what is new.
    learned = frozenset(job.learned)
    rows, before = [r for r in rows if r["sample_id"] not in learned], [r for r in rows if r["sample_id"] in learned]
    rows = recipe.at_most(rows, cfg.max_new_samples, f"{cfg.seed}:{job.version}")  # another choice each run
    fresh = len(rows)
    rows = recipe.with_replay(rows, [before, *earlier], cfg.replay_share, cfg.seed, frozenset(job.replay_exclude))
    examples = [recipe.render(r, tokenizer, cfg.max_seq_len) for r in rows]
    parent = Path(job.parent_path) if job.parent_path else None
    if parent is not None:  # smaller steps from an adapter that already knows the earlier nights
        cfg = cfg.model_copy(update={"learning_rate": cfg.learning_rate * cfg.incremental_lr_scale})
    nf4 = recipe.use_nf4(cfg, Path(job.base_path))  # before loading: on auto it depends on the free memory
    model = recipe.load_model(Path(job.base_path), cfg, parent)
    with _bar() as bar:
        task = bar.add_task("train", total=None, version=job.version, loss=float("nan"), tps=0.0)

        def progress(step: int, total: int, loss: float, tps: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss, tps=tps)
            if not sys.stderr.isatty() and (step == 1 or step % 10 == 0 or step == total):
                print(f"step {step}/{total} loss {loss:.4f} {tps:,.0f} tokens/s", file=sys.stderr, flush=True)

        result = recipe.train(model, examples, cfg, pad_id, progress)
    metrics = {
        "steps": result.steps,
        "tokens": result.tokens,
        "label_tokens": result.label_tokens,
        "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "loss_first": result.losses[0],
        "loss_last": result.losses[-1],
        "loss_last10": sum(result.losses[-10:]) / len(result.losses[-10:]),
        "samples": len(examples),
        "replayed": len(rows) - fresh,
        "learning_rate": cfg.learning_rate,
        "quantization": "nf4" if nf4 else "none",
        "micro_tokens": result.micro_tokens,
        "gradient_checkpointing": result.checkpointing,
        "device": str(next(model.parameters()).device),
    }
    if recipe.world()[0] == 0:  # one writer
        recipe.save(model, Path(job.out_dir), _manifest(job, rows, metrics))
        probe.write(Path(job.out_dir), probe.greedy(model, tokenizer))  # what vLLM must answer before it serves it
    return metrics


def main(argv: list[str]) -> int:
    import logging

    from infra.models import offline_hub  # the worker runs alone: it must not reach a hub either

    offline_hub()
    logging.basicConfig(level=logging.WARNING)
    job = Job.from_json(Path(argv[0]).read_text())
    try:
        group = _join_group(job.config.gpus)
        metrics = run(job)
    except MemoryError:
        print(FAILED + "out of memory", file=sys.stderr)
        return 3
    except Exception as e:  # every failure becomes a reason the registry records
        import torch

        if isinstance(e, torch.cuda.OutOfMemoryError):
            reason = "out of GPU memory"
        else:
            reason = f"{type(e).__name__}: {e}"
        import traceback

        traceback.print_exc()
        print(FAILED + reason.splitlines()[0][:500], file=sys.stderr)
        return 3
    if group:
        import torch.distributed as dist

        dist.barrier()  # process 0 has written the adapter
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank:
            return 0
    print(json.dumps(metrics))
    return 0


def _join_group(gpus: int) -> bool:
    """Under torchrun: join its process group (NCCL on GPUs, gloo on CPU); False when run alone."""
    import os

    import torch
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return False
    if size != gpus:
        raise ValueError(f"torchrun started {size} processes, retrain.gpus is {gpus}")
    if torch.cuda.is_available():
        if torch.cuda.device_count() < size:
            raise ValueError(f"retrain.gpus={size} but this machine has {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
