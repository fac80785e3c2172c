"""Curation throughput: N rated chats in DuckDB -> filtered, deduplicated, capped samples -> snapshot.

    .venv/bin/python bench/curate.py [--chats 100000] [--users 2000]

Loads N synthetic store-support chats, each rated (40% up; half the downs carry a correction), into a
fresh DuckDB file as ingest stores them (texts already scrubbed: scrubbing is ingest's cost, measured by
bench/ingest.py). Then, in a fresh child process so its peak memory is its own, runs what `flywheel
curate` runs: candidates, all filters (length, language, leftover PII, placeholders, MinHash
near-duplicates, per-user cap), the review policy (auto), and the Parquet snapshot. The baseline, in the
same run: the floor of that work, reading the same candidates out of DuckDB and writing them as Parquet.
Target: < 60 s for 100,000 chats on 2 cores.

--repeated F gives that share of the chats one of 10 fixed answers, as a trained adapter answers (the
same policy text, liked by some, corrected by others): the worst case of the contest rule, which compares
every correction with every rating of its answer text.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
from pathlib import Path
from curation import curate, snapshot
from curation.config import CurationConfig
from infra.db import connect
db, out = sys.argv[1], Path(sys.argv[2])
con = connect(db)
cfg = CurationConfig(review_policy="auto")
t0 = time.perf_counter()
report = curate.run(con, cfg)
t1 = time.perf_counter()
snap = snapshot.build(con, cfg, out)
t2 = time.perf_counter()
print(json.dumps({"curate_s": t1 - t0, "snapshot_s": t2 - t1, "report": report.as_dict(),
                  "counts": snap.manifest["counts"], "snapshot": snap.snapshot_id}))
"""

BASELINE = r"""
import sys, time
import pyarrow.parquet as pq
from curation.curate import CANDIDATES
from infra.db import connect
con = connect(sys.argv[1], read_only=True)
t0 = time.perf_counter()
table = con.execute(CANDIDATES.format(join="")).to_arrow_table()
pq.write_table(table, sys.argv[2] + "/all.parquet", compression="zstd")
print(time.perf_counter() - t0)
"""


def scrubbed(texts):
    """What ingest's scrubber writes for the synthetic generator's PII (names, emails, phones)."""
    from ingest import synthetic
    from ingest.scrub import Scrubbed

    names = re.compile(r"\b(" + "|".join(synthetic.FIRST + synthetic.LAST) + r")\b")
    out = []
    for t in texts:
        t = re.sub(r"[\w.]+@[\w.]+", "<EMAIL_ADDRESS>", t)
        t = re.sub(r"\+1 415 555 \d{4}", "<PHONE_NUMBER>", t)
        out.append(Scrubbed(names.sub("<PERSON>", t), ()))
    return out


POLICIES = [f"Policy {k}: you can do that within {k + 2} days from your account page." for k in range(10)]


def load(path: Path, chats: int, users: int, repeated: float = 0.0) -> float:
    from infra.db import open_store
    from ingest import sink, synthetic
    from ingest.batch import Record, prepare

    t0 = time.perf_counter()
    con = open_store(path)
    events = synthetic.events(chats * 2, users=users, feedback_share=1.0)
    if repeated:
        events = [
            e.model_copy(update={"response": POLICIES[n % 10]})
            if isinstance(e, synthetic.ChatLog) and (n := zlib.crc32(e.response_id.encode()) % 1000) < repeated * 1000
            else e
            for e in events
        ]
    kinds = {"c": "chat", "f": "feedback"}
    for start in range(0, len(events), 20_000):
        part = events[start : start + 20_000]
        records = [
            Record("c" if isinstance(e, synthetic.ChatLog) else "f", 0, start + i, e.model_dump_json().encode())
            for i, e in enumerate(part)
        ]
        sink.write(con, "bench", None, prepare(records, kinds, scrubbed, "bench"))
    con.close()
    return time.perf_counter() - t0


def child(code: str, *args: str) -> tuple[str, int]:
    """Run code in a fresh interpreter; returns its stdout and its own peak RSS in MB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(done.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return done.stdout.strip().splitlines()[-1], max(peak, before) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--repeated", type=float, default=0.0, help="share of chats given one of 10 fixed answers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        loaded = load(db, args.chats, args.users, args.repeated)
        print(
            f"loaded {args.chats:,} rated chats from {args.users:,} users in {loaded:.1f} s"
            + (f" ({args.repeated:.0%} of them with one of 10 fixed answers)" if args.repeated else "")
        )
        base_out, _ = child(BASELINE, str(db), tmp)
        baseline = float(base_out)
        out, peak = child(CHILD, str(db), str(Path(tmp) / "snapshots"))
        result = json.loads(out)
    total = result["curate_s"] + result["snapshot_s"]
    r, c = result["report"], result["counts"]
    print(f"curate    {result['curate_s']:.1f} s: {r['samples']:,} samples, {r['kept']:,} kept, dropped {r['dropped']}")
    print(
        f"snapshot  {result['snapshot_s']:.1f} s: {c['train']:,} train + {c['eval']:,} eval from {c['users']:,} users"
    )
    print(
        f"total     {total:.1f} s for {args.chats:,} chats ({args.chats / total:,.0f} chats/s), peak memory {peak:,} MB"
    )
    print(f"baseline  {baseline:.1f} s to read the candidates and write them as Parquet (the I/O floor)")
    print(f"ratio     {total / baseline:.1f}x the floor; target < 60 s: {'met' if total < 60 else 'NOT met'}")


if __name__ == "__main__":
    main()
