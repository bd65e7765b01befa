"""The clients of `serve_load.py`, run by locust (headless): each posts, without pause, a
request of 1 or 8 résumé texts (half each) to `/invocations` in MLflow's `{"inputs": [...]}`
format, and counts as a failure any answer that is not a 200 with one prediction per text.

The texts come from the JSON file that `SERVE_LOAD_TEXTS` names (written by serve_load.py),
so the same mix goes to every server.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, constant, task

TEXTS: list[str] = json.loads(Path(os.environ["SERVE_LOAD_TEXTS"]).read_text(encoding="utf-8"))
BATCH_SIZES = (1, 8)


class TextClient(FastHttpUser):
    wait_time = constant(0)  # a closed loop: the next request as soon as the answer comes

    def on_start(self) -> None:
        self.rng = random.Random(id(self))

    @task
    def predict(self) -> None:
        size = self.rng.choice(BATCH_SIZES)
        texts = [self.rng.choice(TEXTS) for _ in range(size)]
        with self.client.post(
            "/invocations", json={"inputs": texts}, name=f"batch {size}", catch_response=True
        ) as answer:
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}: {(answer.text or '')[:200]}")
            elif len(answer.json().get("predictions", [])) != size:
                answer.failure("not one prediction per text")
