"""Synthetic, realistic chat events for benches, tests and the demo: a fictional online store's support.

Deterministic for a seed. Names, emails, phones and order numbers appear the way customers type them.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone

from ingest.contracts import ChatLog, Feedback, Message

FIRST = ["Maria", "John", "Aisha", "Wei", "Carlos", "Emma", "Liam", "Olivia", "Noah", "Sophia", "James", "Priya",
         "Lucas", "Mia", "Ahmed", "Yuki", "Elena", "David", "Fatima", "Oliver", "Chloe", "Mateo", "Grace", "Ivan"]
LAST = ["Garcia", "Smith", "Khan", "Chen", "Rossi", "Muller", "Brown", "Johnson", "Patel", "Kim", "Nguyen",
        "Silva", "Kowalski", "Martin", "Lopez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson"]
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
OPENERS = ["Thanks for reaching out, {first}.", "I'm sorry to hear that, {first}.", "Happy to help!",
           "Thank you for your patience.", "Good question.", "I understand how frustrating that is."]
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


def person(rng: random.Random) -> dict:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.com",
        "phone": f"+1 415 555 {rng.randint(1000, 9999)}",
        "order": f"#{rng.randint(100000, 999999)}",
    }


def chat(rng: random.Random, user_id: str, app_id: str = "store-support", variant: str = "base") -> ChatLog:
    who = person(rng)
    question = rng.choice(QUESTIONS).format(**who)
    answer = f"{rng.choice(OPENERS)} {rng.choice(ANSWERS)}".format(first=who["name"].split()[0], order=who["order"])
    return ChatLog(
        event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        response_id=f"resp-{rng.getrandbits(64):016x}", app_id=app_id, user_id=user_id,
        conversation_id=f"conv-{rng.getrandbits(32):08x}",
        messages=[Message(role="system", content="You are the support assistant of an online store."),
                  Message(role="user", content=question)],
        response=answer, variant=variant, latency_ms=round(rng.uniform(80, 900), 1),
        created_at=datetime.now(timezone.utc),
    )


def feedback(rng: random.Random, chat: ChatLog) -> Feedback:
    up = rng.random() < 0.4
    return Feedback(
        event_id=uuid.UUID(int=rng.getrandbits(128), version=4), response_id=chat.response_id, app_id=chat.app_id,
        user_id=chat.user_id, rating=1 if up else -1,
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
