"""Ingest for honest traffic while one key sends the worst text it is allowed (issue 18, item 15).

    .venv/bin/python bench/scrub_attack.py [--events 4000] [--rounds 2]

Honest synthetic events go through the real path after Kafka (parse, the 2-worker Presidio pool, the DuckDB
sink) in batches of 500. The attacker is one key at the API's limits: texts of the largest scrub cost one
text may have (ingest.contracts.MAX_TEXT_COST), as fast as serving.scrub_cost_per_s lets it (the default),
in two shapes: phone-shaped digits (the slowest per character) and prose (the slowest per unit of cost).
Prints honest events/s without and with each attacker, and the ratio. Target: >= 0.8.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.db import open_store  # noqa: E402
from ingest import sink  # noqa: E402
from ingest.batch import Record, prepare  # noqa: E402
from ingest.config import PiiConfig  # noqa: E402
from ingest.contracts import MAX_FIELD_CHARS, MAX_TEXT_COST, Feedback, scrub_cost  # noqa: E402
from ingest.scrub import SCRUBBER_VERSION  # noqa: E402
from ingest.scrub_pool import ScrubPool  # noqa: E402
from ingest.synthetic import events as make_events  # noqa: E402
from serving.config import ServingConfig  # noqa: E402

KINDS = {"chats": "chat", "feedback": "feedback"}
BATCH = 500


def largest(unit: str) -> str:
    text = ""
    while scrub_cost(text + unit) <= MAX_TEXT_COST and len(text + unit) <= MAX_FIELD_CHARS:
        text += unit
    return text


SHAPES = {"phone-shaped": largest("call 555-123-4567 "), "prose": largest("the parcel never came, nobody answered ")}


def records(evs, start: int) -> list[Record]:
    return [
        Record("feedback" if isinstance(e, Feedback) else "chats", 0, start + i, e.model_dump_json().encode())
        for i, e in enumerate(evs)
    ]


def attack_event(text: str) -> Feedback:
    return Feedback(
        event_id=uuid.uuid4(),
        response_id="chatcmpl-x",
        app_id="attacker",
        user_id="u-attacker",
        rating=-1,
        comment=text,
    )


def run(pool: ScrubPool, honest, text: str | None, rate: float, workdir: Path) -> tuple[float, int]:
    """Honest events/s, and how many attacker texts got in."""
    con = open_store(workdir / f"{uuid.uuid4().hex}.duckdb")
    offset, spent, sent = 0, 0.0, 0
    started = time.perf_counter()
    for i in range(0, len(honest), BATCH):
        batch = records(honest[i : i + BATCH], offset)
        offset += len(batch)
        if text is not None:  # what the key's bucket has earned since the start, in whole texts
            while spent + scrub_cost(text) <= rate * (time.perf_counter() - started):
                batch += records([attack_event(text)], offset)
                offset, spent, sent = offset + 1, spent + scrub_cost(text), sent + 1
        sink.write(con, "bench", None, prepare(batch, KINDS, pool.scrub, SCRUBBER_VERSION))
    elapsed = time.perf_counter() - started
    con.close()
    return len(honest) / elapsed, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2, help="Alternate baseline and attack this many times.")
    args = parser.parse_args()
    rate = ServingConfig().scrub_cost_per_s
    honest = make_events(args.events, seed=7)
    pool = ScrubPool(PiiConfig())  # the default: 2 worker processes
    try:
        pool.scrub([SHAPES["phone-shaped"], "warm up, Maria Garcia"])
        results = {"baseline": [], **{name: [] for name in SHAPES}}
        sent = {name: 0 for name in SHAPES}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                results["baseline"].append(run(pool, honest, None, rate, Path(tmp))[0])
                for name, text in SHAPES.items():
                    per_s, n = run(pool, honest, text, rate, Path(tmp))
                    results[name].append(per_s)
                    sent[name] += n
    finally:
        pool.close()
    base = sum(results["baseline"]) / len(results["baseline"])
    print(
        f"scrub_cost_per_s {rate:g} per key; one attacker text costs <= {MAX_TEXT_COST} "
        f"({', '.join(f'{k} {len(v)} chars' for k, v in SHAPES.items())})"
    )
    print(f"honest ingest alone          {base:7.0f} events/s  (mean of {args.rounds})")
    for name in SHAPES:
        mean = sum(results[name]) / len(results[name])
        print(
            f"with a {name:<13} attacker {mean:7.0f} events/s  ratio {mean / base:.2f}  "
            f"({sent[name]} attacker texts in)"
        )


if __name__ == "__main__":
    main()
