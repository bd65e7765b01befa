"""Load benchmark of the served model: `onnxport serve` (fp32 and int8) against the same
trained tagger logged with MLflow's transformers flavor (a PyTorch pipeline) and served by
`mlflow models serve --env-manager local`, one server at a time, on 127.0.0.1 only.

The load is locust's, headless (`serve_locustfile.py`): `--users` clients in a closed loop for
`--seconds`, each request 1 or 8 résumé texts of realistic lengths (the same mix for every
server). Same workers (`--workers`) and threads (`--threads`: ONNX Runtime intra-op threads,
and torch's through OMP_NUM_THREADS/MKL_NUM_THREADS) for every server. Reported per server:
throughput (requests and texts per second), p50/p99 latency and error count from locust, and
the server's peak resident memory while loaded (psutil, every 0.5 s).

    make install-bench   # locust, pinned (the `bench` extra)
    .venv/bin/python benchmarks/serve_load.py --users 16 --seconds 60 --json-out /tmp/load.json
    .venv/bin/python benchmarks/serve_load.py --users 2 --seconds 5    # checks the script

Targets (issue 17), 16 clients for 60 s: 0 errors; onnxport int8 or fp32 throughput at least
2x the transformers flavor's, at a p99 no higher than its, with at most half its server RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import requests
from common import machine, now, tree_rss

from onnxport.artifact.manifest import verify_directory
from onnxport.samples import RESUME_LINES, sample_texts

MB = 1024.0 * 1024.0
HERE = Path(__file__).resolve().parent
TRANSFORMERS = "transformers (PyTorch)"
TARGETS = {"errors": 0, "throughput_ratio": 2.0, "rss_ratio": 0.5}
# The demo's conversion settings (onnxport demo): its int8 agrees with fp32 on about 0.99
# of the validation tokens, so it gates at 0.98.
CONVERSION = {
    "onnx": {"quantization": "int8", "optimize": "extended"},
    "validation": {"min_task_agreement": 0.98},
}


def ensure_locust() -> None:
    done = subprocess.run([sys.executable, "-m", "locust", "--version"], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(
            "locust is not installed: make install-bench "
            "(pip install -c constraints.txt -e '.[bench]')"
        )


def request_texts() -> list[str]:
    """Résumé lines alone (50-85 characters), by two and by four (about 300)."""
    return [
        *RESUME_LINES,
        *sample_texts(len(RESUME_LINES), min_lines=2),
        *sample_texts(7, min_lines=4, offset=3),
    ]


def prepare_models(workdir: Path, checkpoint: Path | None) -> tuple[Path, Path]:
    """The onnxport conversion (fp32, int8) and the transformers-flavor model, made once."""
    from onnxport.demo.training import build_demo_checkpoint

    checkpoint = checkpoint or build_demo_checkpoint(workdir / "demo-cache")
    converted = workdir / "onnx"
    if verify_directory(converted):
        from onnxport.pipeline import convert
        from onnxport.request import ConversionRequest
        from onnxport.request.config import ConversionConfig

        print(f"converting {checkpoint} into {converted}", file=sys.stderr)
        config = ConversionConfig().with_overrides(**CONVERSION)
        convert(ConversionRequest(checkpoint, converted, config=config, force=True))
    flavored = workdir / "transformers-model"
    if not (flavored / "MLmodel").is_file():
        import mlflow.transformers
        import torch
        import transformers

        print(f"saving {checkpoint} with MLflow's transformers flavor", file=sys.stderr)
        tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
        model = transformers.AutoModelForTokenClassification.from_pretrained(checkpoint)
        pipe = transformers.pipeline(
            "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple"
        )
        mlflow.transformers.save_model(
            pipe,
            str(flavored),
            input_example=[RESUME_LINES[0]],
            # Its requirement inference reaches for torchvision, which is not installed.
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"transformers=={transformers.__version__}",
            ],
        )
    return converted, flavored


def server_commands(
    converted: Path, flavored: Path, args: argparse.Namespace
) -> dict[str, tuple[list[str], int]]:
    """Each server's command and port (a free one each)."""
    onnxport = [sys.executable, "-m", "onnxport.cli", "serve", str(converted)]
    same = ["--workers", str(args.workers), "--threads", str(args.threads)]
    ports = {name: _free_port() for name in ("int8", "fp32", "transformers")}
    return {
        f"onnxport {v}": (
            [*onnxport, "--variant", v, *same, "--port", str(ports[v])],
            ports[v],
        )
        for v in ("int8", "fp32")
    } | {
        TRANSFORMERS: (
            [
                *(sys.executable, "-m", "mlflow", "models", "serve", "-m", str(flavored)),
                *("--env-manager", "local", "-h", "127.0.0.1", "-w", str(args.workers)),
                *("-p", str(ports["transformers"])),
            ],
            ports["transformers"],
        )
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = ("mlflow models serve", "onnxport.cli serve")


def served_rss(root: psutil.Process) -> int:
    """Resident bytes of the processes that serve (uvicorn's): the tree without the commands
    that launched uvicorn and only wait for it (`mlflow models serve`, `onnxport serve`, the
    shell mlflow runs uvicorn through)."""
    total = tree_rss(root)
    with contextlib.suppress(psutil.Error):
        for process in [root, *root.children(recursive=True)]:
            line = " ".join(process.cmdline())
            if any(name in line for name in LAUNCHERS) or process.name() in ("bash", "sh"):
                total -= process.memory_info().rss
    return total


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], url: str, log: Path
) -> Iterator[psutil.Process]:
    """The server in its own process group, once /ping answers; the group stopped after."""
    with log.open("w") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "MLFLOW_DISABLE_TELEMETRY": "true"},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{' '.join(command)} stopped:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(command)} did not answer in 300 s")
            time.sleep(0.5)
        yield psutil.Process(process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def warm_up(url: str, texts: list[str], rounds: int) -> None:
    for i in range(rounds):
        for size in (1, 8):
            batch = [texts[(i * 8 + j) % len(texts)] for j in range(size)]
            answer = requests.post(f"{url}/invocations", json={"inputs": batch}, timeout=120)
            if answer.status_code != 200:
                raise SystemExit(f"warm-up request failed: {answer.status_code} {answer.text}")


def run_locust(url: str, texts_file: Path, prefix: Path, args: argparse.Namespace) -> dict:
    command = [
        *(sys.executable, "-m", "locust", "-f", str(HERE / "serve_locustfile.py"), "--headless"),
        *("-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s"),
        *("-H", url, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"),
        *("--stop-timeout", "30"),
    ]
    env = {**os.environ, "SERVE_LOAD_TEXTS": str(texts_file)}
    # locust exits 1 when a request failed: the failures are counted from its figures.
    subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL)
    with Path(f"{prefix}_stats.csv").open(encoding="utf-8") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows["Aggregated"]
    per_text = sum(
        float(rows[name]["Requests/s"]) * size
        for name, size in (("batch 1", 1), ("batch 8", 8))
        if name in rows
    )
    return {
        "requests": int(total["Request Count"]),
        "errors": int(total["Failure Count"]),
        "requests_per_s": round(float(total["Requests/s"]), 2),
        "texts_per_s": round(per_text, 2),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "by_batch": {
            name: {"p50_ms": float(row["50%"]), "p99_ms": float(row["99%"])}
            for name, row in rows.items()
            if name.startswith("batch")
        },
    }


def measure(name: str, command, port: int, texts_file: Path, args) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    workdir = args.workdir
    # The same threads for every server: ONNX Runtime's come from --threads, torch's from these.
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    # `mlflow models serve` runs `uvicorn` from PATH: this venv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    slug = name.split(" (")[0].replace(" ", "-")
    with running(command, env, url, workdir / f"{slug}.log") as server:
        warm_up(url, json.loads(texts_file.read_text()), args.warmup)
        idle = served_rss(server)
        peak, stop = [idle, tree_rss(server)], threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                peak[0] = max(peak[0], served_rss(server))
                peak[1] = max(peak[1], tree_rss(server))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            figures = run_locust(url, texts_file, workdir / f"locust-{slug}", args)
        finally:
            stop.set()
            sampler.join()
    figures.update(
        rss_mb_idle=round(idle / MB, 1),
        rss_mb_peak=round(peak[0] / MB, 1),
        rss_mb_peak_tree=round(peak[1] / MB, 1),
    )
    return figures


def judge(results: dict[str, dict]) -> list[tuple[str, bool]]:
    theirs = results[TRANSFORMERS]
    verdicts = [
        (f"{name}: {r['errors']} errors", r["errors"] == TARGETS["errors"])
        for name, r in results.items()
    ]
    for name, ours in results.items():
        if name == TRANSFORMERS:
            continue
        ratio = ours["requests_per_s"] / max(theirs["requests_per_s"], 1e-9)
        rss = ours["rss_mb_peak"] / theirs["rss_mb_peak"]
        verdicts.append(
            (
                f"{name}: throughput {ratio:.2f}x (>= {TARGETS['throughput_ratio']}), p99 "
                f"{ours['p99_ms']:.0f} <= {theirs['p99_ms']:.0f} ms, RSS {rss:.2f}x "
                f"(<= {TARGETS['rss_ratio']})",
                ratio >= TARGETS["throughput_ratio"]
                and ours["p99_ms"] <= theirs["p99_ms"]
                and rss <= TARGETS["rss_ratio"],
            )
        )
    return verdicts


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"{result['users']} clients for {result['seconds']} s, requests of 1 or 8 résumé texts; "
        f"{result['workers']} worker(s), {result['threads']} thread(s) each",
        f"CPU: {m['cpu']} x{m['cpus']}, load average {m['load_average_1m_5m']}; {result['date']}",
        "",
        f"{'server':<24}{'req/s':>8}{'texts/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}"
        f"{'RSS MB':>8}{'tree MB':>9}",
    ]
    for name, r in result["servers"].items():
        lines.append(
            f"{name:<24}{r['requests_per_s']:>8.1f}{r['texts_per_s']:>9.1f}{r['p50_ms']:>8.0f}"
            f"{r['p99_ms']:>8.0f}{r['errors']:>8}{r['rss_mb_peak']:>8.0f}"
            f"{r['rss_mb_peak_tree']:>9.0f}"
        )
    lines += ["", "targets (one onnxport variant meeting all three is enough):"]
    lines += [f"  {'PASS' if ok else 'FAIL'}  {text}" for text, ok in result["targets"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxport-serve-load"))
    parser.add_argument("--checkpoint", type=Path, help="default: the demo's trained tagger")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=1)
    # One per request: both servers answer requests in parallel threads (MLflow's server).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5, help="requests of each size first")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    ensure_locust()
    args.workdir.mkdir(parents=True, exist_ok=True)
    converted, flavored = prepare_models(args.workdir, args.checkpoint)
    texts_file = args.workdir / "texts.json"
    texts_file.write_text(json.dumps(request_texts(), ensure_ascii=False), encoding="utf-8")
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f}: the figures will be noisy", file=sys.stderr)
    results = {}
    for name, (command, port) in server_commands(converted, flavored, args).items():
        print(f"{name}: {args.users} clients for {args.seconds} s", file=sys.stderr)
        results[name] = measure(name, command, port, texts_file, args)
        print(f"  {results[name]}", file=sys.stderr)
    result = {
        "benchmark": "serve_load",
        "date": now(),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(),
        **{k: getattr(args, k) for k in ("users", "seconds", "workers", "threads")},
        "servers": results,
        "targets": judge(results),
    }
    print(render(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json_out}")
    no_errors = all(ok for text, ok in result["targets"] if text.endswith(" errors"))
    fast = any(ok for text, ok in result["targets"] if "throughput" in text)
    return 0 if no_errors and fast else 1


if __name__ == "__main__":
    sys.exit(main())
