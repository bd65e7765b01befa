"""How long and how much memory localization takes on a BERT-base-sized model (issue 7).

Builds a BERT-base token classifier (default `BertConfig`, 9 labels, random weights), exports
it with the dynamo exporter, shifts one bias in layer 5 of the exported file, then runs the
localization that follows a failed validation in a fresh process and reports its wall time
and peak RSS (getrusage of that process alone).

    .venv/bin/python benchmarks/localize_bert_base.py [--workdir /tmp/onnxport-bench-loc]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

BIAS = "model.bert.encoder.layer.5.intermediate.dense.bias"


def prepare(workdir: Path) -> None:
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import BertConfig, BertForTokenClassification

    from onnxport.demo.training import corpus, train_wordpiece_tokenizer
    from onnxport.export import export_to_onnx
    from onnxport.sources import load_source

    checkpoint = workdir / "checkpoint"
    if not (checkpoint / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = BertConfig(num_labels=9, architectures=["BertForTokenClassification"])
        BertForTokenClassification(config).eval().save_pretrained(checkpoint)
        train_wordpiece_tokenizer(corpus(), checkpoint)
    broken = workdir / "broken" / "model.onnx"
    if not broken.is_file():
        exported = export_to_onnx(load_source(checkpoint), workdir / "export" / "model.onnx")
        model = onnx.load(str(exported.path))
        (bias,) = [i for i in model.graph.initializer if i.name == BIAS]
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, BIAS))
        broken.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(broken))


def localize(workdir: Path) -> None:
    from onnxport.request.config import SourceConfig
    from onnxport.sources import load_source
    from onnxport.verify.divergence import locate_fp32_failure
    from onnxport.verify.references import compute_references
    from onnxport.verify.validate import validate_model

    started = time.perf_counter()
    source = load_source(workdir / "checkpoint")
    references = compute_references(source, [(1, 128)])
    task = source.task
    # As in the pipeline: PyTorch is freed before ONNX Runtime validates.
    del source
    gc.collect()
    validation = validate_model(workdir / "broken" / "model.onnx", references, task=task)
    found = locate_fp32_failure(
        lambda: load_source(workdir / "checkpoint", SourceConfig()),
        workdir / "broken" / "model.onnx",
        references,
        validation,
        opset=18,
    )
    print(
        json.dumps(
            {
                "validation_passed": validation.passed,
                "finding": found.summary() if found else None,
                "module": found.first.module if found and found.first else None,
                "seconds_total": round(time.perf_counter() - started, 1),
                "seconds_localize": round(found.seconds, 1) if found else None,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxport-bench-loc"))
    parser.add_argument("--phase", choices=("all", "localize"), default="all")
    args = parser.parse_args()
    if args.phase == "localize":
        localize(args.workdir)
        return
    prepare(args.workdir)
    command = [sys.executable, __file__, "--workdir", str(args.workdir), "--phase", "localize"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    print(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
