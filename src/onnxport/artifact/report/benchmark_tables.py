"""The benchmark's tables and notes: latencies per runtime and shape (a text-generation
conversion's prefill among them) and a text-generation conversion's decode."""

from __future__ import annotations

from onnxport.artifact.records.benchmark import (
    PYTORCH,
    BenchmarkRecord,
    DecodeRecord,
    TimingRecord,
)
from onnxport.artifact.report.table import Table, size


def _speedup(result: BenchmarkRecord, timing: TimingRecord) -> str:
    if timing.runtime == PYTORCH:
        return "reference"
    if result.unstable:
        return "unstable"
    ratio = result.speedup(timing)
    return "-" if ratio is None else f"{ratio:.2f}x"


def latency_row(result: BenchmarkRecord, t: TimingRecord) -> tuple[str, ...]:
    """One row of the latency table, as the report and the terminal both show it."""
    return (
        str(t.batch_size),
        str(t.size),
        t.runtime,
        f"{t.p50_ms:.2f}",
        f"{t.p90_ms:.2f}",
        f"{t.p99_ms:.2f}",
        f"{t.throughput:.1f}",
        _speedup(result, t),
    )


def benchmark_tables(result: BenchmarkRecord) -> tuple[Table, Table]:
    runtimes = Table(
        ("runtime", "engine", "file", "size", "load s", "RSS growth after warm-up"),
        tuple(
            (
                r.name,
                r.engine,
                r.file or "-",
                size(r.size_bytes),
                f"{r.load_seconds:.2f}",
                "-" if r.rss_growth_mb is None else f"{r.rss_growth_mb:.0f} MB",
            )
            for r in result.runtimes
        ),
        frozenset({3, 4, 5}),
    )
    order = {r.name: i for i, r in enumerate(result.runtimes)}
    timings = sorted(result.timings, key=lambda t: (t.batch_size, t.size, order.get(t.runtime, 0)))
    latency = Table(
        (
            "batch",
            result.size_name,
            "runtime",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "samples/s",
            "speed-up vs PyTorch (p50)",
        ),
        tuple(latency_row(result, t) for t in timings),
        frozenset({0, 1, 3, 4, 5, 6, 7}),
    )
    return runtimes, latency


def benchmark_note(result: BenchmarkRecord) -> str:
    s = result.settings
    versions = ", ".join(f"{k} {v}" for k, v in result.versions.items())
    return (
        f"Measured {result.created_at} on {result.machine.get('cpu_model')} "
        f"({result.machine.get('logical_cpus')} logical CPUs), {s.threads} threads "
        f"({result.machine.get('threading')}). {s.iterations} timed runs per runtime and "
        f"shape after {s.warmup} warm-up runs, interleaved (each iteration runs every runtime "
        f"once, in rotating order) on the same inputs ({result.inputs}); {versions}."
        + (f" {unstable_note(result)}" if result.unstable else "")
    )


def unstable_note(result: BenchmarkRecord) -> str:
    """What the report, the plot and the terminal say of unstable figures."""
    return (
        f"Unstable timings, no speed-up claimed: {'; '.join(result.unstable)}. Measure again "
        "on an idle machine, or with more iterations."
    )


def _decode_speedup(result: BenchmarkRecord, decode: DecodeRecord) -> str:
    reference = result.generation.runtime(PYTORCH) if result.generation else None
    if decode.runtime == PYTORCH:
        return "reference"
    if reference is None or reference.tokens_per_s <= 0:
        return "-"
    return f"{decode.tokens_per_s / reference.tokens_per_s:.2f}x"


def decode_row(result: BenchmarkRecord, decode: DecodeRecord) -> tuple[str, ...]:
    """One row of the decode table, as the report and the terminal both show it."""
    return (
        decode.runtime,
        f"{decode.tokens_per_s:.1f}",
        _decode_speedup(result, decode),
        "-" if decode.bytes_per_token is None else f"{decode.bytes_per_token / 1e6:.3g}",
        "-" if decode.bandwidth_share is None else f"{100 * decode.bandwidth_share:.2g}%",
        f"{decode.peak_rss_mb:.0f}",
        decode.same_tokens or "-",
    )


DECODE_HEADERS = (
    "runtime",
    "decode tokens/s",
    "speed-up vs PyTorch",
    "MB read/token",
    "% of memory bandwidth",
    "peak RSS MB",
    "greedy tokens = PyTorch's",
)


def decode_table(result: BenchmarkRecord) -> Table:
    assert result.generation is not None
    return Table(
        DECODE_HEADERS,
        tuple(decode_row(result, d) for d in result.generation.decode),
        frozenset({1, 2, 3, 4, 5}),
    )


def decode_note(result: BenchmarkRecord) -> str:
    generation = result.generation
    assert generation is not None
    s = result.settings
    lengths = ", ".join(map(str, generation.prompt_tokens))
    return (
        f"Greedy, batch 1, {s.new_tokens} new tokens after each of "
        f"{len(generation.prompt_tokens)} chat prompts ({lengths} tokens), end tokens ignored; "
        f"tokens/s from the first new token to the last, the median "
        f"of {s.rounds} interleaved rounds, each runtime in a process of its own (its peak RSS "
        f"its own, loading included). A step reads the weights it multiplies and the KV cache "
        f"at the mean past length; this machine's memory bandwidth, measured with numpy on "
        f"{s.threads} threads: {generation.bandwidth_gb_s:.1f} GB/s."
    )
