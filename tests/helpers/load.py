"""Clients that chat and rate until stopped, remembering every 2xx: what a kill test checks is stored."""

from __future__ import annotations

import threading
import time

import httpx


class Load:
    def __init__(self, url: str, key: str, clients: int, timeout: float = 10):
        self.url, self.key, self.timeout = url, key, timeout
        self.acked_chats: set[str] = set()
        self.acked_feedback: set[str] = set()
        self.failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _client(self, i: int) -> None:
        with httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=self.timeout
        ) as c:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    r = c.post(
                        "/v1/chat/completions",
                        json={"user": f"user-{i}", "messages": [{"role": "user", "content": f"question {i}-{n}"}]},
                    )
                    if r.status_code != 200:
                        self.failed += 1
                        continue
                    self.acked_chats.add(r.json()["id"])
                    f = c.post(
                        "/v1/feedback", json={"response_id": r.json()["id"], "rating": "up" if n % 2 else "down"}
                    )
                    if f.status_code == 202:
                        self.acked_feedback.add(f.json()["id"])
                    else:
                        self.failed += 1
                except httpx.HTTPError:  # the API is down or closed: an error, never a false 2xx
                    self.failed += 1
                    time.sleep(0.05)
