"""The benchmark of a text-generation conversion: prefill and decode, PyTorch eager
`generate()` against onnxport's own loop (`verify.decode.generate_ids`) on each published
variant.

Each measurement runs in a child process of its own (`isolation.call`), so that its peak RSS
is its runtime's alone: the runtime is loaded, warmed up, then measured:
- prefill: one forward over a prompt of each length, batch 1, an empty cache (`repeats`
  times);
- decode: greedy generation of `new_tokens` after each of 3 chat prompts, end tokens ignored
  so that every runtime decodes as many steps, timed from the first new token to the last.

The rounds are interleaved: each round measures every runtime once, in rotating order, so
that the machine's drift hits all of them alike. Same threads everywhere
(`torch.set_num_threads`, ONNX Runtime intra-op threads, inter-op 1, no spinning). The
decode's share of the memory-bandwidth limit: the bytes a step reads (`bytes_per_token`)
times tokens/s, over the bandwidth numpy reaches on this machine with the same threads.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxport.artifact.manifest import Manifest
from onnxport.artifact.reader import PublishedDirectory
from onnxport.artifact.records.benchmark import (
    PYTORCH,
    DecodeRecord,
    GenerationBenchmarkRecord,
    RuntimeRecord,
    TimingRecord,
)
from onnxport.errors import BenchmarkError, BenchmarkInputError
from onnxport.names import Variant
from onnxport.process import own_peak_rss_mb
from onnxport.progress import ignore_progress

logger = logging.getLogger(__name__)

PROMPTS = (
    "Explain in a few sentences why the sky is blue.",
    "Write a short Python function that checks whether a number is prime.",
    "Give me three tips for a productive morning routine.",
)
PREFILL_TEXT = (
    "The history of computing is a story of abstractions built on abstractions. Early "
    "machines were programmed by rewiring panels; later, stored programs let the same "
    "hardware run different instructions. Assemblers named the instructions, compilers "
    "translated structured languages into them, and operating systems shared one machine "
    "among many programs. Each layer hid the one below it, and each let more people build "
    "more things. "
)
"""Repeated as often as the longest prefill needs; read raw, without the chat template."""
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class Job:
    """What one child measures: one runtime, on token ids the parent made."""

    runtime: str
    """`pytorch`, or the published variant."""
    directory: Path
    model: Path | None
    """The ONNX file; None for PyTorch (the source checkpoint the manifest records)."""
    threads: int
    chats: tuple[tuple[int, ...], ...]
    prefills: tuple[tuple[int, ...], ...]
    new_tokens: int
    repeats: int
    pad_id: int


@dataclass(frozen=True)
class Measured:
    load_seconds: float
    prefill_ms: dict[int, list[float]]
    """Per prompt length, each forward's milliseconds."""
    decode_steps: int
    decode_seconds: float
    tokens: list[list[int]]
    peak_rss_mb: float
    """The child's own peak (`process.own_peak_rss_mb`), loading included."""


class PyTorchGeneration:
    """PyTorch eager `generate()` on a loaded `*ForCausalLM`, greedy, end tokens ignored (so
    that every runtime decodes the same number of steps)."""

    def __init__(self, model: Any, pad_id: int) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.model.generation_config.eos_token_id = None
        self.pad_id = pad_id

    @classmethod
    def recorded(cls, directory: Path, pad_id: int) -> PyTorchGeneration:
        """On the source checkpoint that `directory`'s manifest records, loaded as the
        conversion loaded it."""
        from onnxport.artifact.manifest import read_manifest
        from onnxport.benchmark.runtimes import load_recorded_source

        source = load_recorded_source(read_manifest(directory))
        return cls(source.module.model, pad_id)  # inside the flat-signature wrapper

    def prefill(self, ids: Sequence[int]) -> None:
        tensor = self.torch.tensor([list(ids)])
        with self.torch.inference_mode():
            self.model(
                input_ids=tensor, attention_mask=self.torch.ones_like(tensor), use_cache=True
            )

    def generate(self, ids: Sequence[int], new: int, stamp: Callable[[], None]) -> list[int]:
        """`new` tokens after `ids`; `stamp` is called as each new token after the first
        comes."""
        from transformers.generation.streamers import BaseStreamer

        class Stamps(BaseStreamer):
            def __init__(self) -> None:
                self.prompt_seen = False

            def put(self, value: Any) -> None:
                if self.prompt_seen:
                    stamp()
                self.prompt_seen = True

            def end(self) -> None:
                pass

        tensor = self.torch.tensor([list(ids)])
        with self.torch.inference_mode():
            out = self.model.generate(
                tensor,
                attention_mask=self.torch.ones_like(tensor),
                max_new_tokens=new,
                do_sample=False,
                pad_token_id=self.pad_id,
                streamer=Stamps(),
            )
        return [int(t) for t in out[0, len(ids) :]]


class OnnxGeneration:
    """onnxport's own loop (`verify.decode.generate_ids`) on one ONNX file, greedy, end
    tokens ignored; the same calls as `PyTorchGeneration`."""

    def __init__(self, model: Path, threads: int, pad_id: int) -> None:
        from onnxport.verify.decode import cache_layout
        from onnxport.verify.runtime import create_session, session_options

        self.session = create_session(model, session_options(threads=threads, spinning=False))
        self.layout = cache_layout(self.session)
        self.pad_id = pad_id

    def prefill(self, ids: Sequence[int]) -> None:
        from onnxport.verify.decode import generate_ids

        generate_ids(
            self.session,
            [ids],
            max_new_tokens=1,
            end_ids=(),
            pad_id=self.pad_id,
            layout=self.layout,
        )

    def generate(self, ids: Sequence[int], new: int, stamp: Callable[[], None]) -> list[int]:
        from onnxport.verify.decode import generate_ids

        generated = generate_ids(
            self.session,
            [ids],
            max_new_tokens=new,
            end_ids=(),
            pad_id=self.pad_id,
            layout=self.layout,
            on_step=lambda step, logits: stamp(),
        )
        return generated.tokens[0]


def _stamp(stamps: list[float]) -> None:
    stamps.append(time.perf_counter())


def measure(job: Job, progress: object = None) -> Measured:
    """One runtime loaded, warmed up and measured (the function each child runs)."""
    started = time.perf_counter()
    runtime: PyTorchGeneration | OnnxGeneration
    if job.model is None:
        import torch

        torch.set_num_threads(job.threads)
        runtime = PyTorchGeneration.recorded(job.directory, job.pad_id)
    else:
        runtime = OnnxGeneration(job.model, job.threads, job.pad_id)
    load_seconds = time.perf_counter() - started
    runtime.generate(job.chats[0], WARMUP_TOKENS, lambda: None)
    for ids in job.prefills:
        runtime.prefill(ids)
    prefill_ms: dict[int, list[float]] = {}
    for ids in job.prefills:
        for _ in range(job.repeats):
            started = time.perf_counter()
            runtime.prefill(ids)
            prefill_ms.setdefault(len(ids), []).append((time.perf_counter() - started) * 1000)
    steps, seconds, tokens = 0, 0.0, []
    for ids in job.chats:
        stamps: list[float] = []
        tokens.append(runtime.generate(ids, job.new_tokens, functools.partial(_stamp, stamps)))
        steps += len(stamps) - 1
        seconds += stamps[-1] - stamps[0]
    return Measured(load_seconds, prefill_ms, steps, seconds, tokens, own_peak_rss_mb())


# ---- the machine and the bytes a step reads ----------------------------------------------


def memory_bandwidth(*, threads: int, mib: int = 512, repeats: int = 7) -> dict[str, float]:
    """This machine's memory bandwidth in GB/s: the best of numpy copies (`np.copyto`,
    counted as read + write bytes, `copy_gb_s`) and of reads (`sum` of a float32 array,
    `read_gb_s`) over `repeats`, the array split over `threads` threads (numpy releases the
    GIL for both)."""
    a = np.ones(mib * 1024 * 1024 // 4, dtype=np.float32)
    b = np.empty_like(a)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(a.size), threads)]

    def best(run: Callable[[int, int], object], bytes_moved: int) -> float:
        seconds = []
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(repeats):
                started = time.perf_counter()
                list(pool.map(lambda lo_hi: run(*lo_hi), bounds))
                seconds.append(time.perf_counter() - started)
        return bytes_moved / min(seconds) / 1e9

    return {
        "copy_gb_s": best(lambda lo, hi: np.copyto(b[lo:hi], a[lo:hi]), 2 * a.nbytes),
        "read_gb_s": best(lambda lo, hi: a[lo:hi].sum(), a.nbytes),
    }


def step_bytes(model: Path) -> tuple[int, int]:
    """What a one-token decode step of `model` reads, from its graph alone (the weights are
    not loaded): the initializer bytes it multiplies (every initializer except those used
    only as a Gather's table: an embedding, of which a step reads one row), and the KV
    cache's bytes per cached position (its `past_key_values.*` inputs)."""
    import onnx

    from onnxport.tasks import PAST_PREFIX

    graph = onnx.load(str(model), load_external_data=False).graph
    itemsize = onnx.helper.tensor_dtype_to_np_dtype
    gathered: set[str] = set()
    used: set[str] = set()
    for node in graph.node:
        for position, name in enumerate(node.input):
            (gathered if node.op_type == "Gather" and position == 0 else used).add(name)
    weights = 0
    for tensor in graph.initializer:
        if tensor.name in gathered and tensor.name not in used:
            continue
        size = int(np.prod(tensor.dims, dtype=np.int64))
        weights += size * itemsize(tensor.data_type).itemsize
    per_position = 0
    for value in graph.input:
        if value.name.startswith(PAST_PREFIX):
            tensor = value.type.tensor_type
            heads, head_size = tensor.shape.dim[1].dim_value, tensor.shape.dim[3].dim_value
            per_position += heads * head_size * itemsize(tensor.elem_type).itemsize
    return weights, per_position


# ---- the parent ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompts:
    """What every runtime generates from: token ids made once, by the parent."""

    chats: list[list[int]]
    """The chat prompts (through the chat template, when the checkpoint has one)."""
    prefills: list[list[int]]
    """Raw text cut at each prefill length."""
    pad_id: int


def generation_prompts(
    published: PublishedDirectory, lengths: Sequence[int], new_tokens: int
) -> Prompts:
    """The prompts as token ids; a generation longer than the model reads is refused."""
    from onnxport.predict.generator import Prompting

    prompting = Prompting(published)
    chats = [prompting.ids(p) for p in PROMPTS]
    longest = max(len(c) for c in chats) + new_tokens
    if prompting.context is not None and longest > prompting.context:
        raise BenchmarkInputError(
            f"a chat prompt and {new_tokens} new tokens make {longest} tokens: more than the "
            f"{prompting.context} this model reads",
            hint=f"use at most {prompting.context - max(len(c) for c in chats)} new tokens",
        )
    text = PREFILL_TEXT
    while len(prompting.ids(text, raw=True)) < max(lengths):
        text += PREFILL_TEXT
    long = prompting.ids(text, raw=True)
    return Prompts(chats, [long[:n] for n in lengths], prompting.pad_id)


def _timing(runtime: str, length: int, ms: list[float]) -> TimingRecord:
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return TimingRecord(
        runtime=runtime,
        batch_size=1,
        size=length,
        iterations=len(ms),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(np.mean(ms)),
        throughput=1000.0 / p50 if p50 > 0 else 0.0,
    )


def benchmark_generation(
    output_dir: Path,
    manifest: Manifest,
    prompts: Prompts,
    *,
    new_tokens: int,
    rounds: int,
    repeats: int,
    threads: int,
    include_pytorch: bool,
) -> tuple[list[RuntimeRecord], list[TimingRecord], GenerationBenchmarkRecord]:
    """Measure PyTorch eager (optional) and every published variant of a text-generation
    conversion generating from `prompts`, in `rounds` interleaved rounds; returns the
    runtimes, the prefill timings (batch 1, size = prompt length) and the decode figures."""
    from onnxport.isolation.parent import call

    chats, prefills = prompts.chats, prompts.prefills
    outputs = {str(out.variant): out for out in manifest.published_outputs()}
    files = {name: output_dir / out.file for name, out in outputs.items()}
    names = ([PYTORCH] if include_pytorch else []) + list(files)
    job = {
        name: Job(
            runtime=name,
            directory=output_dir,
            model=files.get(name),
            threads=threads,
            chats=tuple(tuple(c) for c in chats),
            prefills=tuple(tuple(p) for p in prefills),
            new_tokens=new_tokens,
            repeats=repeats,
            pad_id=prompts.pad_id,
        )
        for name in names
    }
    measured: dict[str, list[Measured]] = {name: [] for name in names}
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            returned = call(
                measure,
                job[name],
                name=f"the {name} benchmark",
                error_type=BenchmarkError,
                on_event=ignore_progress,
                on_line=lambda line: logger.debug("%s", line),
            )
            measured[name].append(returned.value)
        logger.info(
            "round %d/%d: decode tok/s %s",
            round_ + 1,
            rounds,
            ", ".join(
                f"{n} {m[-1].decode_steps / m[-1].decode_seconds:.1f}" for n, m in measured.items()
            ),
        )
    bandwidth = max(memory_bandwidth(threads=threads).values())
    fp32 = files.get(str(Variant.FP32)) or next(iter(files.values()))
    read = {name: step_bytes(path) for name, path in files.items()}
    mean_past = statistics.mean(len(c) for c in chats) + new_tokens / 2
    runtimes, timings, decode = [], [], []
    for name in names:
        runs = measured[name]
        # PyTorch multiplies the fp32 weights.
        weights, kv_position = read.get(name) or read.get(str(Variant.FP32)) or step_bytes(fp32)
        per_token = int(weights + kv_position * mean_past)
        rates = [m.decode_steps / m.decode_seconds for m in runs]
        rate = statistics.median(rates)
        same = None
        if include_pytorch and name != PYTORCH:
            reference = measured[PYTORCH][0].tokens
            equal = sum(a == b for a, b in zip(runs[0].tokens, reference))
            same = f"{equal}/{len(reference)}"
        decode.append(
            DecodeRecord(
                runtime=name,
                tokens_per_s=rate,
                tokens_per_s_rounds=rates,
                peak_rss_mb=max(m.peak_rss_mb for m in runs),
                bytes_per_token=per_token,
                bandwidth_share=rate * per_token / (bandwidth * 1e9),
                same_tokens=same,
            )
        )
        for length in (len(p) for p in prefills):
            ms = [v for m in runs for v in m.prefill_ms[length]]
            timings.append(_timing(name, length, ms))
        load = round(statistics.median(m.load_seconds for m in runs), 4)
        if name == PYTORCH:
            runtimes.append(_pytorch_record(Path(manifest.source.path), load))
        else:
            out = outputs[name]
            runtimes.append(
                RuntimeRecord(
                    name=name,
                    engine="onnxruntime",
                    file=out.file,
                    size_bytes=out.total_size_bytes or 0,
                    load_seconds=load,
                )
            )
    generation = GenerationBenchmarkRecord(
        prompt_tokens=[len(c) for c in chats], bandwidth_gb_s=bandwidth, decode=decode
    )
    return runtimes, timings, generation


def _pytorch_record(checkpoint: Path, load_seconds: float) -> RuntimeRecord:
    files = sorted(checkpoint.glob("*.safetensors")) if checkpoint.is_dir() else [checkpoint]
    return RuntimeRecord(
        name=PYTORCH,
        engine="pytorch-eager",
        file=files[0].name if len(files) == 1 else None,
        size_bytes=sum(f.stat().st_size for f in files if f.is_file()),
        load_seconds=load_seconds,
    )
