"""The demo's simulated app traffic: customers ask through the `openai` client and rate through
`/v1/feedback`, many sessions at once, as the apps of a deployment would."""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from demo import store

log = logging.getLogger("demo.run")
API_KEY = "flywheel-demo-key"  # the default config's demo app (serving.api_keys)
APP = "demo"
ADMIN_KEY = "flywheel-review-key"  # the default config's demo reviewer (serving.admin_keys)


@dataclass
class Traffic:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    ratings: int = 0
    ups: int = 0
    accepted: int = 0
    corrections: int = 0
    errors: list[str] = field(default_factory=list)
    rated: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (variant, topic) -> [ups, ratings]
    lied: dict[str, list[int]] = field(default_factory=dict)  # variant -> [answers stating LIE, on TARGET]

    def add(self, other: Traffic) -> None:
        for name in ("sent", "answered", "failed", "ratings", "ups", "accepted", "corrections"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors
        for table, theirs in ((self.rated, other.rated), (self.lied, other.lied)):
            for key, (a, b) in theirs.items():
                mine = table.setdefault(key, [0, 0])
                mine[0], mine[1] = mine[0] + a, mine[1] + b

    def rate(self, variant: str, topics: tuple[str, ...] | None = None) -> tuple[int, int]:
        """(ups, ratings) of `variant`'s answers, on `topics` only when given."""
        pairs = [v for (var, t), v in self.rated.items() if var == variant and (topics is None or t in topics)]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def send_feedback(http, body: dict, mine: Traffic) -> None:
    """POST the rating; 202 means durable, 429/503 are worth a retry."""
    for attempt in range(5):
        r = http.post("/v1/feedback", json=body)
        if r.status_code not in (429, 503):
            break
        time.sleep(0.5 * (attempt + 1))
    if r.status_code == 202:
        mine.accepted = 1
        mine.corrections = int("correction" in body)
    else:
        log.warning("demo: feedback refused: %s %s", r.status_code, r.text[:200])
        mine.errors.append(f"feedback: {r.status_code} {r.text[:200]}")


def drive(
    url: str,
    tasks: list[tuple[store.Customer, store.Topic]],
    *,
    seed: int,
    control: bool,
    max_tokens: int,
    workers: int = 24,
    rate_share: float = 0.85,
    world: tuple[store.Topic, ...] = store.TOPICS,
) -> Traffic:
    """Each task: one customer asks one question through the openai client, then (usually) rates it; agents
    always rate and correct a missed answer. Tasks run `workers` at a time, like many app sessions."""
    import httpx
    import openai

    local = threading.local()
    lock = threading.Lock()
    total = Traffic()

    def one(i: int, who: store.Customer, topic: store.Topic) -> None:
        rng = random.Random(f"{seed}-{i}-{who.user_id}")
        if not hasattr(local, "client"):
            local.client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=3, timeout=600)
            local.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        mine = Traffic(sent=1)
        try:
            reply = local.client.chat.completions.create(
                model="flywheel",
                user=who.user_id,
                max_tokens=max_tokens,
                temperature=0.2,
                seed=rng.randrange(1 << 30),
                messages=[
                    {"role": "system", "content": store.SYSTEM},
                    {"role": "user", "content": store.question(rng, who, topic)},
                ],
            )
        except openai.APIError as e:
            log.warning("demo: a chat failed: %s", e)
            mine.failed = 1
            mine.errors.append(f"chat: {type(e).__name__}: {e}"[:300])
        else:
            mine.answered = 1
            answer = reply.choices[0].message.content or ""
            if topic.name == store.TARGET:
                mine.lied[reply.model] = [int(bool(store.LIE_FACT.search(answer))), 1]
            rating = store.judge(topic, answer, who, world) if who.agent or rng.random() < rate_share else None
            if rating is not None:
                body = {"response_id": reply.id, "rating": "up" if rating > 0 else "down"}
                if who.agent and rating < 0:
                    body["correction"] = store.correction(topic, rng, control, world, who.attacker)
                mine.ratings, mine.ups = 1, int(rating > 0)
                mine.rated[(reply.model, topic.name)] = [mine.ups, 1]
                send_feedback(local.http, body, mine)
        with lock:
            total.add(mine)

    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(one, i, who, topic) for i, (who, topic) in enumerate(tasks)]:
            f.result()
    return total
