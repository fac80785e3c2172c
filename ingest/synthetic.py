"""Synthetic, realistic chat events for benches, tests and the demo: a fictional online store's support.

Deterministic for a seed. Names, emails, phones and order numbers appear the way customers type them.
"""

from __future__ import annotations

import random
import string
import uuid
from datetime import UTC, datetime

from ingest.contracts import BASE, ChatLog, Feedback, Message

FIRST = [
    "Maria",
    "John",
    "Aisha",
    "Wei",
    "Carlos",
    "Emma",
    "Liam",
    "Olivia",
    "Noah",
    "Sophia",
    "James",
    "Priya",
    "Lucas",
    "Mia",
    "Ahmed",
    "Yuki",
    "Elena",
    "David",
    "Fatima",
    "Oliver",
    "Chloe",
    "Mateo",
    "Grace",
    "Ivan",
]
LAST = [
    "Garcia",
    "Smith",
    "Khan",
    "Chen",
    "Rossi",
    "Muller",
    "Brown",
    "Johnson",
    "Patel",
    "Kim",
    "Nguyen",
    "Silva",
    "Kowalski",
    "Martin",
    "Lopez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Moore",
    "Jackson",
]
QUESTIONS = [
    "Hi, I'm {name}. Where is my order {order}? You can reach me at {email}.",
    "My package {order} was supposed to arrive Tuesday but it hasn't. Call me on {phone} please.",
    "Can I return a jacket I bought last week? It doesn't fit.",
    "What is your warranty policy for headphones?",
    "I was charged twice for order {order}. Please refund it.",
    "Please send the invoice for {order} to {email}, thanks. - {name}",
    "How long does shipping to Canada take?",
    "The assistant told me returns are free but I was charged a fee. Order {order}.",
    "Do you ship on weekends? I need the charger by Saturday.",
    "How do I change the delivery address for order {order}?",
    "Is it possible to pay with PayPal or only with a card?",
    "My name is {name} and my phone number is {phone}; my order {order} arrived damaged.",
]
OPENERS = [
    "Thanks for reaching out, {first}.",
    "I'm sorry to hear that, {first}.",
    "Happy to help!",
    "Thank you for your patience.",
    "Good question.",
    "I understand how frustrating that is.",
]
ANSWERS = [
    "Could you share your order number so I can check its status?",
    "Orders usually ship within 2 business days and arrive in 3 to 5 days.",
    "You can return unworn items within 30 days for a full refund.",
    "Our headphones come with a one-year limited warranty covering manufacturing defects.",
    "I have forwarded your request about {order} to our billing team, who will contact you shortly.",
    "I can see that order {order} left our warehouse yesterday; tracking updates within 24 hours.",
    "We accept all major cards and PayPal at checkout.",
    "You can change the delivery address in your account until the order ships.",
]


def person(rng: random.Random) -> dict[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.com",
        "phone": f"+1 415 555 {rng.randint(1000, 9999)}",
        "order": f"#{rng.randint(100000, 999999)}",
    }


def chat(rng: random.Random, user_id: str, app_id: str = "store-support", variant: str = BASE) -> ChatLog:
    who = person(rng)
    question = rng.choice(QUESTIONS).format(**who)
    answer = f"{rng.choice(OPENERS)} {rng.choice(ANSWERS)}".format(first=who["name"].split()[0], order=who["order"])
    return ChatLog(
        event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        response_id=f"resp-{rng.getrandbits(64):016x}",
        app_id=app_id,
        user_id=user_id,
        conversation_id=f"conv-{rng.getrandbits(32):08x}",
        messages=[
            Message(role="system", content="You are the support assistant of an online store."),
            Message(role="user", content=question),
        ],
        response=answer,
        variant=variant,
        latency_ms=round(rng.uniform(80, 900), 1),
        created_at=datetime.now(UTC),
    )


def feedback(rng: random.Random, chat: ChatLog) -> Feedback:
    up = rng.random() < 0.4
    return Feedback(
        event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        response_id=chat.response_id,
        app_id=chat.app_id,
        user_id=chat.user_id,
        rating=1 if up else -1,
        comment=None if up else f"Not helpful. Call me at {person(rng)['phone']}.",
        correction=None if up or rng.random() < 0.5 else "Returns are free within 30 days; use the prepaid label.",
    )


def events(n: int, seed: int = 0, users: int = 500, feedback_share: float = 0.3) -> list[ChatLog | Feedback]:
    """n events: chats, and feedback on a share of them right after."""
    rng = random.Random(seed)
    out: list[ChatLog | Feedback] = []
    while len(out) < n:
        c = chat(rng, f"user-{rng.randrange(users):05d}")
        out.append(c)
        if len(out) < n and rng.random() < feedback_share:
            out.append(feedback(rng, c))
    return out


# Labelled PII, one entity per sentence: the scrubbing-quality bench (bench/pii_quality.py) and the canary
# test (tests/chaos/test_canary_pii.py).
PII_FIRST = [
    "Maria",
    "John",
    "Aisha",
    "Wei",
    "Carlos",
    "Emma",
    "Liam",
    "Olivia",
    "Noah",
    "Sophia",
    "James",
    "Priya",
    "Lucas",
    "Hannah",
    "Ahmed",
    "Yuki",
    "Elena",
    "David",
    "Fatima",
    "Oliver",
    "Chloe",
    "Mateo",
    "Grace",
    "Ivan",
    "Sarah",
    "Michael",
    "Anna",
    "Robert",
    "Laura",
    "Daniel",
    "Jennifer",
    "Thomas",
    "Ravi",
    "Sofia",
]
PII_LAST = [
    *LAST,
    "Williams",
    "Davis",
    "Miller",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Walker",
    "Young",
    "Schmidt",
]  # the chat surnames, then more
PII_STREETS = [
    "Baker",
    "Maple",
    "Oak",
    "Elm",
    "Sunset",
    "Evergreen",
    "Lincoln",
    "Washington",
    "Park",
    "Cedar",
    "Highland",
    "Lakeview",
    "Hillcrest",
    "Riverside",
    "Church",
    "Mill",
]
PII_SUFFIX = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Drive", "Court", "Way"]
PII_CITIES = ["Springfield", "Portland", "Austin", "Denver", "Boston", "Seattle"]

PII_TEMPLATES = [
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


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def _iban(rng: random.Random) -> str:
    country, length = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14)])

    def chars(alphabet: str, n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    if country in ("GB", "NL"):  # a bank code of 4 letters, then digits
        bban = chars(string.ascii_uppercase, 4) + chars(string.digits, 14 if country == "GB" else 10)
    else:
        bban = chars(string.digits, length)
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def pii_value(kind: str, rng: random.Random) -> str:
    """A realistic value of a Presidio entity type (checksums valid where the type has one)."""
    first, last = rng.choice(PII_FIRST), rng.choice(PII_LAST)
    if kind == "PERSON":
        return f"{first} {last}"
    if kind == "EMAIL_ADDRESS":
        local = f"{first.lower()}{rng.choice(['.', '_', ''])}{last.lower()}{rng.randint(1, 999)}"
        return f"{local}@{rng.choice(['gmail.com', 'example.org', 'mail.co.uk', 'outlook.com'])}"
    if kind == "PHONE_NUMBER":
        a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(1000, 9999)
        london = f"+44 20 {rng.randint(7000, 7999)} {c}"
        return rng.choice([f"({a}) {b}-{c}", f"+1 {a} {b} {c}", f"{a}-{b}-{c}", london])
    if kind == "CREDIT_CARD":
        number = _luhn_complete(rng.choice(["4", "51", "55"]), 16, rng)
        return rng.choice([number, " ".join(number[i : i + 4] for i in range(0, 16, 4))])
    if kind == "US_SSN":
        area = rng.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == "IBAN_CODE":
        return _iban(rng)
    if kind == "IP_ADDRESS":
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    if kind == "STREET_ADDRESS":
        street = f"{rng.randint(1, 9999)} {rng.choice(PII_STREETS)} {rng.choice(PII_SUFFIX)}"
        return rng.choice([street, f"{street}, {rng.choice(PII_CITIES)}", f"{street}, Apt {rng.randint(1, 40)}"])
    raise ValueError(kind)
