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
import string
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.config import PiiConfig  # noqa: E402
from ingest.scrub import Scrubber  # noqa: E402

FIRST = ["Maria", "John", "Aisha", "Wei", "Carlos", "Emma", "Liam", "Olivia", "Noah", "Sophia", "James", "Priya",
         "Lucas", "Hannah", "Ahmed", "Yuki", "Elena", "David", "Fatima", "Oliver", "Chloe", "Mateo", "Grace",
         "Ivan", "Sarah", "Michael", "Anna", "Robert", "Laura", "Daniel", "Jennifer", "Thomas", "Ravi", "Sofia"]
LAST = ["Garcia", "Smith", "Khan", "Chen", "Rossi", "Muller", "Brown", "Johnson", "Patel", "Kim", "Nguyen",
        "Silva", "Kowalski", "Martin", "Lopez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Williams",
        "Davis", "Miller", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker", "Young", "Schmidt"]
STREETS = ["Baker", "Maple", "Oak", "Elm", "Sunset", "Evergreen", "Lincoln", "Washington", "Park", "Cedar",
           "Highland", "Lakeview", "Hillcrest", "Riverside", "Church", "Mill"]
SUFFIX = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Drive", "Court", "Way"]
CITIES = ["Springfield", "Portland", "Austin", "Denver", "Boston", "Seattle"]

TEMPLATES = [
    ("PERSON", "Hi, my name is {v} and I need help with my order."),
    ("PERSON", "This is {v}, I ordered a blue jacket last week."),
    ("PERSON", "Please ask {v} to call me back about the refund."),
    ("PERSON", "Thanks, {v}. The package arrived today."),
    ("PERSON", "The delivery was signed for by {v} at the front desk."),
    ("EMAIL_ADDRESS", "You can reach me at {v} anytime."),
    ("EMAIL_ADDRESS", "Send the invoice to {v} please."),
    ("EMAIL_ADDRESS", "My account email is {v}, can you reset it?"),
    ("PHONE_NUMBER", "Call me on {v} after 5pm."),
    ("PHONE_NUMBER", "My phone number is {v}."),
    ("PHONE_NUMBER", "Text {v} when the courier is close."),
    ("CREDIT_CARD", "I paid with my card {v} and was charged twice."),
    ("CREDIT_CARD", "Please refund the credit card {v}."),
    ("US_SSN", "For the credit check my SSN is {v}."),
    ("US_SSN", "My social security number is {v}, do you need it?"),
    ("IBAN_CODE", "Refund to my bank account IBAN {v}, thanks."),
    ("IBAN_CODE", "My IBAN is {v}."),
    ("IP_ADDRESS", "I keep getting blocked from the IP {v} when I log in."),
    ("IP_ADDRESS", "The checkout failed from address {v} this morning."),
    ("STREET_ADDRESS", "Please ship it to {v} instead."),
    ("STREET_ADDRESS", "I moved, my new address is {v}."),
    ("STREET_ADDRESS", "Can you deliver to {v} on Saturday?"),
]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def iban(rng: random.Random) -> str:
    country, length = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14)])
    if country == "GB":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(14))
    elif country == "NL":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(10))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(length))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def value(kind: str, rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    if kind == "PERSON":
        return f"{first} {last}"
    if kind == "EMAIL_ADDRESS":
        return f"{first.lower()}{rng.choice(['.', '_', ''])}{last.lower()}{rng.randint(1, 999)}@{rng.choice(['gmail.com', 'example.org', 'mail.co.uk', 'outlook.com'])}"
    if kind == "PHONE_NUMBER":
        a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(1000, 9999)
        return rng.choice([f"({a}) {b}-{c}", f"+1 {a} {b} {c}", f"{a}-{b}-{c}", f"+44 20 {rng.randint(7000, 7999)} {c}"])
    if kind == "CREDIT_CARD":
        number = luhn_complete(rng.choice(["4", "51", "55"]), 16, rng)
        return rng.choice([number, " ".join(number[i : i + 4] for i in range(0, 16, 4))])
    if kind == "US_SSN":
        area = rng.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == "IBAN_CODE":
        return iban(rng)
    if kind == "IP_ADDRESS":
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    if kind == "STREET_ADDRESS":
        street = f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(SUFFIX)}"
        return rng.choice([street, f"{street}, {rng.choice(CITIES)}", f"{street}, Apt {rng.randint(1, 40)}"])
    raise ValueError(kind)


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
