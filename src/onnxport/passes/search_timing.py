"""How a search times its candidates on this machine: interleaved, batch 1 of each
validation input, or a language model's time per generated token; and which is fastest."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxport.verify.runtime import create_session, session_options
from onnxport.verify.timing import measure_interleaved, open_onnx
from onnxport.verify.validate import Reference

TIMING_ITERATIONS = 30
"""Interleaved runs per candidate and shape. Levels a few percent apart need this many on a
shared 2-core machine: with 10, `basic` beat `extended` on DistilBERT-base by 2% at 1x128 in
one search, while 200 runs (benchmarks/variant_search.py) put `extended` 5% ahead."""
TIMING_WARMUP = 3
DECODE_ROUNDS = 5
"""Interleaved generations per candidate, when a language model is timed decoding."""

Decode = Callable[[ort.InferenceSession], int]
"""A short greedy generation, batch 1, in the session; returns the tokens it made."""


@dataclass(frozen=True)
class Timer:
    """How candidates are timed: interleaved, batch 1 of each reference input; a language
    model (`decode`) by what its users wait for, the time per generated token."""

    references: Sequence[Reference]
    threads: int
    decode: Decode | None = None
    decode_label: str = "decode"

    def latencies(self, models: dict[str, Path]) -> dict[str, dict[str, float]]:
        """Median milliseconds per model and batch-1 input shape (`1x128`, `1x3x224x224`);
        with `decode`, median milliseconds per generated token, under `decode_label`."""
        if self.decode is not None:
            return self._decoding(models, self.decode)
        runtimes = [open_onnx(name, path, threads=self.threads) for name, path in models.items()]
        inputs = {
            "x".join(str(n) for n in (1, *next(iter(r.inputs.values())).shape[1:])): {
                k: np.ascontiguousarray(v[:1]) for k, v in r.inputs.items()
            }
            for r in self.references
        }
        shapes = [(1, i) for i in range(len(inputs))]
        keyed = list(inputs.values())
        timings = measure_interleaved(
            runtimes,
            shapes,
            lambda _, i: keyed[i],
            iterations=TIMING_ITERATIONS,
            warmup=TIMING_WARMUP,
        )
        names = list(inputs)
        found: dict[str, dict[str, float]] = {name: {} for name in models}
        for t in timings:
            found[t.runtime][names[t.size]] = t.p50_ms
        return found

    def _decoding(self, models: dict[str, Path], decode: Decode) -> dict[str, dict[str, float]]:
        options = session_options(threads=self.threads, spinning=False)
        sessions = {name: create_session(path, options) for name, path in models.items()}
        for session in sessions.values():
            decode(session)  # warm-up: the first run allocates and picks kernels
        per_token: dict[str, list[float]] = {name: [] for name in sessions}
        names = list(sessions)
        for round_ in range(DECODE_ROUNDS):
            # Rotating order: the machine's drift hits every candidate alike.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                started = time.perf_counter()
                tokens = decode(sessions[name])
                per_token[name].append((time.perf_counter() - started) * 1000 / max(tokens, 1))
        return {name: {self.decode_label: float(np.median(ms))} for name, ms in per_token.items()}


def fastest(latencies: dict[str, dict[str, float]]) -> str:
    """The candidate with the smallest total of medians over the shapes (for a language
    model, the most tokens per second decoding: `Timer.decode`)."""
    return min(latencies, key=lambda name: sum(latencies[name].values()))
