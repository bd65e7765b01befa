"""Whether benchmark figures measure the models or the machine's noise.

On a loaded machine a run can take many times its usual time: PyTorch at 645 ms for 1x32 and
117 ms for 8x128 made a "103x speed-up" that no model has. Two signs give such figures away
without a second run: a wide spread within one runtime and shape (p90 far above p50), and a
larger input that runs faster than a smaller one on the same runtime. Figures that show
either are recorded with the reason, and no speed-up is claimed from them.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnxport.artifact.records.benchmark import TimingRecord

__all__ = ["ORDER_MARGIN", "SPREAD_LIMIT", "unstable_reasons"]

SPREAD_LIMIT = 2.0
"""p90 over p50 above which a runtime's figures on one shape are noise: a run that is not
disturbed varies by tens of percent, not by a factor of two."""
ORDER_MARGIN = 1.5
"""How much faster a larger input (more tokens or a larger batch, the other dimension the
same) may run than a smaller one before the ordering is noise, not measurement error."""


def unstable_reasons(timings: Sequence[TimingRecord]) -> list[str]:
    """Why `timings` cannot support a claim, one reason per finding; empty when they can."""
    reasons = [
        f"{t.runtime} at {t.batch_size}x{t.size}: p90 {t.p90_ms:.2f} ms is "
        f"{t.p90_ms / t.p50_ms:.1f}x its p50 {t.p50_ms:.2f} ms"
        for t in timings
        if t.p50_ms > 0 and t.p90_ms > SPREAD_LIMIT * t.p50_ms
    ]
    for small in timings:
        for large in timings:
            larger = (large.batch_size, large.size) != (small.batch_size, small.size) and (
                large.batch_size >= small.batch_size and large.size >= small.size
            )
            if (
                large.runtime == small.runtime
                and larger
                and large.p50_ms * ORDER_MARGIN < small.p50_ms
            ):
                reasons.append(
                    f"{small.runtime}: {large.batch_size}x{large.size} ran in "
                    f"{large.p50_ms:.2f} ms, {small.p50_ms / large.p50_ms:.1f}x faster than "
                    f"the smaller {small.batch_size}x{small.size} ({small.p50_ms:.2f} ms)"
                )
    return reasons
