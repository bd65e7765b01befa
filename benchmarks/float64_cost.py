"""Benchmark: what the error budget's float64 reference adds to a conversion's wall time.

Converts the DistilBERT-base-sized token classifier of `convert_distilbert_base.py` (66M
parameters) with `onnxport convert CKPT -o OUT --force --json`, alternately with the
default yardstick (`validation.mode: budget`: PyTorch also runs in float64) and with
`validation.mode: tolerance` (float32 only), --rounds times each, interleaved so that the
machine's noise falls on both alike. The first round warms the export cache; it is not
counted. Reports each side's wall times, their medians and the added fraction (target: at
most 30%), and the load stage's own figure from the manifests.

Run from the repository root:

    .venv/bin/python benchmarks/float64_cost.py --rounds 5 --json-out /tmp/float64-cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import checkpoint, machine, now

TARGET_ADDED = 0.30
MODES = ("budget", "tolerance")


def convert_once(ckpt: Path, out: Path, config: Path) -> tuple[float, dict]:
    command = [sys.executable, "-m", "onnxport.cli", "convert", str(ckpt), "-o", str(out)]
    command += ["--force", "--json", "-c", str(config)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"conversion failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxport-bench"))
    parser.add_argument("--tiny", action="store_true", help="a tiny model: prove the script")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    ckpt = checkpoint(args.workdir, tiny=args.tiny)
    with tempfile.TemporaryDirectory(prefix="onnxport-float64-") as scratch:
        configs = {}
        for mode in MODES:
            configs[mode] = Path(scratch) / f"{mode}.yaml"
            configs[mode].write_text(f"validation: {{mode: {mode}}}\n", encoding="utf-8")
        walls: dict[str, list[float]] = {mode: [] for mode in MODES}
        loads: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(args.rounds + 1):
            order = MODES if round_ % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                seconds, manifest = convert_once(ckpt, Path(scratch) / mode, configs[mode])
                if round_ == 0:
                    continue  # warms the export cache and the file system
                walls[mode].append(round(seconds, 2))
                loads[mode].append(manifest["timings"]["load"])
                print(f"round {round_} {mode:>9}: {seconds:.2f} s", file=sys.stderr)
    medians = {mode: statistics.median(walls[mode]) for mode in MODES}
    added = medians["budget"] / medians["tolerance"] - 1.0
    result = {
        "when": now(),
        "machine": machine(),
        "checkpoint": str(ckpt),
        "wall_seconds": walls,
        "load_stage_seconds": loads,
        "median_wall_seconds": medians,
        "added_fraction": round(added, 3),
        "target_added_fraction": TARGET_ADDED,
        "met": added <= TARGET_ADDED,
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
