"""Benchmark: generation with PyTorch eager `generate()` against onnxport's `generate_ids` on
each published ONNX variant of a text-generation conversion.

Each runtime lives in its own worker process (this script run with `--worker`), so that its
peak RSS (`VmHWM`) is its own: PyTorch with `attn_implementation="eager"` (what onnxport
validates against) and with the default `sdpa`, and one worker per published ONNX variant
(which imports neither torch nor transformers). The parent tokenizes and drives the workers
in interleaved rounds: each round runs every runtime once, in rotating order, while the
others wait on their pipe. Same threads everywhere: `torch.set_num_threads(N)`, ONNX Runtime
`intra_op_num_threads=N` and `inter_op_num_threads=1`, spinning off.

Per runtime:
- prefill latency at two prompt lengths (one forward from an empty cache, batch 1);
- decode tokens/s, prefill excluded: 3 chat prompts (through the chat template), greedy,
  64 new tokens each (end tokens ignored on both sides, so that every runtime decodes the
  same number of steps), timed from the first new token to the last;
- peak RSS of the worker process (`VmHWM`: its own, not its parent's at the fork), and
  its RSS once loaded;
- whether its greedy tokens are identical to PyTorch eager's;
- decode as a share of the memory-bandwidth limit: the bytes a decode step reads (the
  weights that the step multiplies, plus the KV cache at the mean past length) times
  tokens/s, over this machine's measured bandwidth (numpy copies, best of several).

    .venv/bin/python benchmarks/generation.py /tmp/bench/smol \
        --checkpoint /work/models/smollm2-135m-instruct/hf --json-out /tmp/generation.json

Run it on a quiet machine (`uptime`: a load well under the number of cores).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import machine, now

from onnxport.benchmark.generation import (
    PREFILL_TEXT,
    PROMPTS,
    OnnxGeneration,
    PyTorchGeneration,
    memory_bandwidth,
    step_bytes,
)
from onnxport.process import own_peak_rss_mb

PYTORCH_EAGER = "pytorch eager"
MB = 1024.0 * 1024.0


# ---- the workers ---------------------------------------------------------------------------


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def _peak_mb() -> float:
    # Not ru_maxrss: a child's counts its parent's memory at the fork (this parent has
    # transformers' tokenizer loaded).
    return own_peak_rss_mb()


def _stamp(stamps: list[float]) -> None:
    stamps.append(time.perf_counter())


def worker(args: argparse.Namespace) -> int:
    """Answers one JSON request per line on stdin with one JSON line on stdout."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    kind, _, target = args.worker.partition(":")
    runtime: PyTorchGeneration | OnnxGeneration
    if kind == "pytorch":
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(args.threads)
        model = AutoModelForCausalLM.from_pretrained(
            args.checkpoint, attn_implementation=target, dtype=torch.float32
        ).eval()
        runtime = PyTorchGeneration(model, args.pad_id)
    else:
        runtime = OnnxGeneration(Path(target), args.threads, args.pad_id)
    reply: dict[str, Any] = {"load_s": time.perf_counter() - started, "rss_mb": _rss_mb()}
    print(json.dumps(reply), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "prefill":
            started = time.perf_counter()
            runtime.prefill(request["ids"])
            reply = {"seconds": time.perf_counter() - started}
        elif request["op"] == "generate":
            stamps: list[float] = []
            started = time.perf_counter()
            tokens = runtime.generate(
                request["ids"], request["new"], functools.partial(_stamp, stamps)
            )
            reply = {
                "tokens": tokens,
                "prefill_s": stamps[0] - started,
                "decode_s": stamps[-1] - stamps[0],
                "decode_steps": len(stamps) - 1,
            }
        else:
            reply = {"peak_rss_mb": _peak_mb(), "rss_mb": _rss_mb()}
            print(json.dumps(reply), flush=True)
            return 0
        print(json.dumps(reply), flush=True)
    return 0


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, spec: str, args: argparse.Namespace, pad_id: int) -> None:
        self.name = name
        command = [
            sys.executable,
            __file__,
            "--worker",
            spec,
            "--checkpoint",
            str(args.checkpoint),
            "--threads",
            str(args.threads),
            "--pad-id",
            str(pad_id),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.loaded = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name} died (exit {self.process.wait()})")
        return json.loads(line)

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        reply = self.ask(op="exit")
        self.process.wait()
        return reply


# ---- the machine's memory bandwidth ---------------------------------------------------------


def pytorch_weights_read(checkpoint: Path) -> int:
    """The checkpoint's parameter bytes, less the embedding table when it is not tied to the
    output layer (tied: the output layer reads all of it every step)."""
    config = json.loads((checkpoint / "config.json").read_text())
    from safetensors import safe_open

    total = 0
    embedding = 0
    with safe_open(checkpoint / "model.safetensors", "np") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            piece = f.get_slice(key)
            shape = piece.get_shape()
            nbytes = int(np.prod(shape)) * 4
            total += nbytes
            if key.endswith("embed_tokens.weight"):
                embedding = nbytes
    return total if config.get("tie_word_embeddings") else total - embedding


# ---- the parent -----------------------------------------------------------------------------


def prompts(checkpoint: Path, prefill_lengths: list[int]) -> tuple[list[list[int]], dict, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    chats = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        for text in PROMPTS
    ]
    text = PREFILL_TEXT
    while len(tokenizer(text)["input_ids"]) < max(prefill_lengths):
        text += PREFILL_TEXT
    long = tokenizer(text)["input_ids"]
    fixed = {n: long[:n] for n in prefill_lengths}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return chats, fixed, int(pad)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from onnxport.artifact.manifest import read_manifest

    chats, fixed, pad_id = prompts(args.checkpoint, args.prefill_lengths)
    manifest = read_manifest(args.directory)
    specs = [(PYTORCH_EAGER, "pytorch:eager"), ("pytorch sdpa", "pytorch:sdpa")]
    files = {}
    for out in manifest.published_outputs():
        specs.append((f"onnx {out.variant}", f"onnx:{args.directory / out.file}"))
        files[f"onnx {out.variant}"] = args.directory / out.file
    workers = [Worker(name, spec, args, pad_id) for name, spec in specs]
    samples: dict[str, dict[str, list[float]]] = {
        w.name: {"decode_tok_s": [], **{f"prefill_{n}": [] for n in fixed}} for w in workers
    }
    tokens: dict[str, list[list[int]]] = {}
    try:
        for w in workers:  # warm-up, not recorded
            w.ask(op="generate", ids=chats[0], new=8)
            w.ask(op="prefill", ids=fixed[min(fixed)])
        for round_ in range(args.rounds):
            order = workers[round_ % len(workers) :] + workers[: round_ % len(workers)]
            for w in order:
                steps = seconds = 0.0
                produced = []
                for ids in chats:
                    reply = w.ask(op="generate", ids=ids, new=args.new_tokens)
                    steps += reply["decode_steps"]
                    seconds += reply["decode_s"]
                    produced.append(reply["tokens"])
                samples[w.name]["decode_tok_s"].append(steps / seconds)
                tokens.setdefault(w.name, produced)
                for n, ids in fixed.items():
                    for _ in range(args.prefill_repeats):
                        reply = w.ask(op="prefill", ids=ids)
                        samples[w.name][f"prefill_{n}"].append(reply["seconds"] * 1000)
            figures = ", ".join(
                f"{w.name} {samples[w.name]['decode_tok_s'][-1]:.1f}" for w in workers
            )
            print(f"round {round_ + 1}/{args.rounds}: decode tok/s {figures}", file=sys.stderr)
    finally:
        ends = {w.name: w.close() for w in workers}
    bandwidth = memory_bandwidth(threads=args.threads)
    limit = max(bandwidth.values())
    read = {name: step_bytes(path) for name, path in files.items()}
    kv_position = next(iter(read.values()))[1]
    mean_past = statistics.mean(len(c) for c in chats) + args.new_tokens / 2
    pytorch_bytes = pytorch_weights_read(args.checkpoint)
    rows = []
    for w in workers:
        weights = read[w.name][0] if w.name in read else pytorch_bytes
        per_token = weights + kv_position * mean_past
        decode = statistics.median(samples[w.name]["decode_tok_s"])
        same = [a == b for a, b in zip(tokens[w.name], tokens[PYTORCH_EAGER])]
        rows.append(
            {
                "runtime": w.name,
                **{
                    f"prefill_{n}_ms": statistics.median(samples[w.name][f"prefill_{n}"])
                    for n in fixed
                },
                "decode_tok_s": decode,
                "decode_tok_s_rounds": samples[w.name]["decode_tok_s"],
                "bytes_per_token_mb": per_token / 1e6,
                "bandwidth_share": decode * per_token / (limit * 1e9),
                "load_s": w.loaded["load_s"],
                "rss_loaded_mb": w.loaded["rss_mb"],
                "peak_rss_mb": ends[w.name]["peak_rss_mb"],
                "tokens_identical": f"{sum(same)}/{len(same)}",
                "first_difference": [
                    next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
                    for a, b in zip(tokens[w.name], tokens[PYTORCH_EAGER])
                ],
            }
        )
    eager = next(r for r in rows if r["runtime"] == PYTORCH_EAGER)["decode_tok_s"]
    for r in rows:
        r["decode_x_eager"] = r["decode_tok_s"] / eager
    return {
        "bandwidth": bandwidth,
        "prompt_tokens": [len(c) for c in chats],
        "prefill_lengths": list(fixed),
        "rows": rows,
        "sample_output": {"prompt": PROMPTS[0], "tokens": tokens[PYTORCH_EAGER][0]},
    }


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    bw = result["bandwidth"]
    lengths = result["prefill_lengths"]
    lines = [
        f"generation, batch 1, greedy, {result['new_tokens']} new tokens x "
        f"{len(result['prompt_tokens'])} chat prompts ({result['prompt_tokens']} tokens), "
        f"{result['threads']} threads, {result['rounds']} interleaved rounds; {result['date']}",
        f"CPU: {m['cpu']} x{m['cpus']}, load average {m['load_average_1m_5m']}; memory bandwidth "
        f"(numpy, {result['threads']} threads, best): copy {bw['copy_gb_s']:.1f} GB/s, read "
        f"{bw['read_gb_s']:.1f} GB/s",
        "",
        "| runtime | "
        + " | ".join(f"prefill {n} ms" for n in lengths)
        + " | decode tok/s | x eager | MB read/token | % of bandwidth | peak RSS MiB "
        "| RSS loaded MiB | tokens = eager |",
        "|---|" + "---|" * (len(lengths) + 7),
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['runtime']} | "
            + " | ".join(f"{r[f'prefill_{n}_ms']:.1f}" for n in lengths)
            + f" | {r['decode_tok_s']:.1f} | {r['decode_x_eager']:.2f} "
            f"| {r['bytes_per_token_mb']:.0f} | {100 * r['bandwidth_share']:.0f}% "
            f"| {r['peak_rss_mb']:.0f} | {r['rss_loaded_mb']:.0f} | {r['tokens_identical']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, nargs="?", help="a text-generation conversion")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-lengths", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--prefill-repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--pad-id", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.directory is None:
        parser.error("the conversion directory is required")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f}: the figures will be noisy", file=sys.stderr)
    import onnxruntime

    result: dict[str, Any] = {
        "benchmark": "generation",
        "date": now(),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(),
        "versions": {"onnxruntime": onnxruntime.__version__},
        "directory": str(args.directory),
        "checkpoint": str(args.checkpoint),
        "threads": args.threads,
        "rounds": args.rounds,
        "new_tokens": args.new_tokens,
        **measure(args),
    }
    print(render(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
