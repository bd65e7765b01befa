"""Does a published directory open in the standard loaders of both transformers generations,
as a new user would try it? A check, not a timing.

- transformers 5 (this venv): `AutoTokenizer.from_pretrained(OUT_DIR)` tokenizes as
  onnxport's predictor does;
- transformers 4.57 with Optimum (the venv `vs_optimum.py` keeps, created once):
  `AutoTokenizer` and `ORTModelForTokenClassification.from_pretrained(OUT_DIR,
  file_name=...)` for every published variant, and Optimum's pipeline (aggregation
  "first", predict's default) finds the entities `OnnxPredictor` finds.

    .venv/bin/python benchmarks/standard_loaders.py OUT_DIR [--venv /tmp/optimum-venv]

Exit code 1 when a loader fails or an answer differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from vs_optimum import ensure_optimum

from onnxport.artifact.reader import PublishedDirectory
from onnxport.predict import OnnxPredictor
from onnxport.samples import RESUME_LINES

OLDER = """
import json, sys
from transformers import AutoTokenizer, pipeline
from optimum.onnxruntime import ORTModelForTokenClassification
directory, files, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(directory)
found = {"tokenizer": type(tokenizer).__name__, "ids": tokenizer(texts)["input_ids"]}
for variant, file in files.items():
    model = ORTModelForTokenClassification.from_pretrained(directory, file_name=file)
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer,
                      aggregation_strategy="first")
    found[variant] = [[[e["entity_group"], e["start"], e["end"]] for e in tagger(t)] for t in texts]
print(json.dumps(found))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="a published token classifier")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/optimum-venv"))
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    published = PublishedDirectory.open(args.output_dir)
    files = {o.variant: o.file for o in published.published()}
    texts = list(RESUME_LINES)
    # One text at a time, as the pipeline runs them: a dynamic int8 model quantizes each
    # activation over the whole batch, so a text's answer can move with its batch-mates.
    expected = {
        variant: [
            [[e.entity_group, e.start, e.end] for e in p.entities]  # type: ignore[union-attr]
            for p in OnnxPredictor(args.output_dir, variant, batch_size=1).predict(texts)
        ]
        for variant in files
    }
    newer = AutoTokenizer.from_pretrained(args.output_dir, local_files_only=True)
    ids = newer(texts)["input_ids"]
    versions = ensure_optimum(args.venv)
    done = subprocess.run(
        [
            *(str(args.venv / "bin" / "python"), "-c", OLDER, str(args.output_dir)),
            *(json.dumps(files), json.dumps(texts)),
        ],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    if done.returncode != 0:
        print(f"transformers {versions['transformers']} cannot load {args.output_dir}:")
        print("\n".join(done.stderr.strip().splitlines()[-5:]))
        return 1
    older = json.loads(done.stdout.strip().splitlines()[-1])
    checks = [
        (f"transformers 5 AutoTokenizer loads: {type(newer).__name__}", True),
        (
            f"transformers {versions['transformers']} AutoTokenizer loads: {older['tokenizer']}",
            True,
        ),
        ("both tokenize the résumé lines the same", older["ids"] == ids),
    ]
    entities = sum(len(t) for t in expected.get("fp32", []))
    for variant, file in files.items():
        checks.append(
            (
                f"Optimum {versions['optimum']} ORTModelForTokenClassification({file}) + pipeline "
                f"= OnnxPredictor's entities ({entities} in fp32 over {len(texts)} lines)",
                older[variant] == expected[variant],
            )
        )
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
