"""Load check of a served text-generation model: `onnxport serve OUT` under `--users` clients
in a closed loop for `--seconds`, each request one chat prompt and
`{"params": {"max_new_tokens": N}}` in MLflow's protocol.

Every answer must be the text `onnxport predict` writes for the same prompt (greedy decoding
is deterministic): a different text counts as an error, as does any status but 200. Reported:
requests, errors, mismatches, requests and tokens per second, p50/p99 latency, the server's
peak resident memory (psutil, every 0.5 s), with the CPU model.

    .venv/bin/python benchmarks/serve_generation.py OUT --users 8 --seconds 60

Target (issue 26): 0 errors under 8 clients for 60 s, the same text as `predict`.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests
from common import machine, now, tree_rss

from onnxport.predict import OnnxPredictor

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three skills a data scientist needs.",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not answer /ping in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="a text-generation conversion")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads/request")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    predictor = OnnxPredictor(args.out_dir, threads=args.threads)
    written = predictor.generate(list(PROMPTS), max_new_tokens=args.max_new_tokens)
    expected = {r.prompt: r.text for r in written}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "onnxport.cli", "serve", str(args.out_dir)]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--threads", str(args.threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = [0.0]
    stop = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    try:
        _wait_until_up(url, server)
        process = psutil.Process(server.pid)

        def watch() -> None:
            while not stop.wait(0.5):
                peak[0] = max(peak[0], tree_rss(process) / 2**20)

        def client(index: int) -> None:
            session = requests.Session()
            turn = index
            while not stop.is_set():
                prompt = PROMPTS[turn % len(PROMPTS)]
                turn += 1
                body = {"inputs": [prompt], "params": {"max_new_tokens": args.max_new_tokens}}
                started = time.perf_counter()
                try:
                    answer = session.post(f"{url}/invocations", json=body, timeout=120)
                    ok = answer.status_code == 200
                    text = answer.json()["predictions"][0]["text"] if ok else answer.text
                except requests.RequestException as e:
                    ok, text = False, str(e)
                elapsed = time.perf_counter() - started
                with lock:
                    if not ok:
                        failures.append(f"error: {text[:200]}")
                    elif text != expected[prompt]:
                        failures.append(f"mismatch on {prompt!r}: {text[:80]!r}")
                    else:
                        latencies.append(elapsed)

        threads = [threading.Thread(target=watch)]
        threads += [threading.Thread(target=client, args=(i,)) for i in range(args.users)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        stop.set()
        server.terminate()
        server.wait(30)
    ordered = sorted(latencies)
    result = {
        "when": now(),
        "machine": machine(),
        "users": args.users,
        "seconds": round(wall, 1),
        "max_new_tokens": args.max_new_tokens,
        "answered": len(latencies),
        "errors": len(failures),
        "first_errors": failures[:5],
        "requests_per_second": round(len(latencies) / wall, 2),
        "mean_new_tokens": round(statistics.mean(len(r.token_ids) for r in written), 1),
        "p50_s": round(ordered[len(ordered) // 2], 3) if ordered else None,
        "p99_s": round(ordered[int(len(ordered) * 0.99)], 3) if ordered else None,
        "server_peak_rss_mib": round(peak[0], 1),
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 1 if failures or not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
