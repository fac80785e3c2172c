"""PII scrubbing quality on a generated, labelled corpus of chat-like sentences.

    .venv/bin/python bench/pii_quality.py [--sentences 600] [--seed 0]

Every sentence comes from a template with known spans (names, emails, phones, card numbers, SSNs, IBANs,
IPs, street addresses). Per entity type: recall (a labelled span overlapped by a finding of the same type),
masked (overlapped by any finding: the value does not survive in the stored text) and precision (findings of
the type that overlap a labelled span of the type). Targets: recall >= 0.95 for the structured types,
>= 0.85 for PERSON.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.config import PiiConfig  # noqa: E402
from ingest.scrub import Scrubber  # noqa: E402
from ingest.synthetic import PII_TEMPLATES as TEMPLATES, pii_value as value  # noqa: E402

def corpus(n: int, seed: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind, template = TEMPLATES[i % len(TEMPLATES)]
        v = value(kind, rng)
        text = template.format(v=v)
        start = template.index("{v}")
        out.append((text, [(kind, start, start + len(v))]))
    return out


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=660)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = corpus(args.sentences, args.seed)
    scrubber = Scrubber(PiiConfig(workers=0))
    results = scrubber.scrub([t for t, _ in data])

    stats: dict[str, dict[str, int]] = {}
    for (text, labels), res in zip(data, results):
        for kind, s, e in labels:
            st = stats.setdefault(kind, {"n": 0, "hit": 0, "masked": 0, "found": 0, "true": 0})
            st["n"] += 1
            st["hit"] += any(f.entity_type == kind and overlaps((f.start, f.end), (s, e)) for f in res.findings)
            st["masked"] += text[s:e] not in res.text
        for f in res.findings:
            st = stats.setdefault(f.entity_type, {"n": 0, "hit": 0, "masked": 0, "found": 0, "true": 0})
            st["found"] += 1
            st["true"] += any(k == f.entity_type and overlaps((f.start, f.end), (s, e)) for k, s, e in labels)

    print(f"{len(data)} sentences, seed {args.seed}")
    print(f"{'entity':<16}{'labelled':>9}{'recall':>8}{'masked':>8}{'found':>7}{'precision':>10}  target")
    for kind in sorted(stats, key=lambda k: -stats[k]["n"]):
        st = stats[kind]
        recall = st["hit"] / st["n"] if st["n"] else float("nan")
        masked = st["masked"] / st["n"] if st["n"] else float("nan")
        precision = st["true"] / st["found"] if st["found"] else float("nan")
        target = "" if not st["n"] else ("recall >= 0.85" if kind == "PERSON" else "recall >= 0.95")
        print(f"{kind:<16}{st['n']:>9}{recall:>8.3f}{masked:>8.3f}{st['found']:>7}{precision:>10.3f}  {target}")


if __name__ == "__main__":
    main()
