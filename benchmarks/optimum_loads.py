"""Does Optimum's `ORTModelForCausalLM` load a published text-generation directory and write
the same greedy tokens as onnxport? A check, not a timing.

- onnxport (this venv): `OnnxGenerator.open(OUT).generate(prompt, max_new_tokens=N)`, greedy, one
  prompt at a time, as `onnxport predict OUT PROMPT --max-new-tokens N --json` runs it;
- Optimum (the venv `vs_optimum.py` keeps, created once; transformers 4.57):
  `ORTModelForCausalLM.from_pretrained(OUT, file_name="model_fp32.onnx", use_cache=True,
  use_io_binding=...)` with the directory's tokenizer, the prompt through
  `apply_chat_template(..., add_generation_prompt=True)` (the raw prompt when the directory has
  no chat template, as onnxport reads it then), and `model.generate(ids, max_new_tokens=N,
  do_sample=False, pad_token_id=...)`.

Prints, per prompt, whether both read the same prompt tokens and wrote the same new tokens,
and where the new tokens first differ.

    .venv/bin/python benchmarks/optimum_loads.py OUT_DIR [--prompt TEXT ...]
        [--max-new-tokens 64] [--io-binding] [--venv /tmp/optimum-venv] [--json-out FILE]

Exit code 1 when Optimum cannot load the directory (its error is printed) or a prompt's
tokens differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from vs_optimum import ensure_optimum

from onnxport.artifact.reader import PublishedDirectory
from onnxport.predict.generator import OnnxGenerator

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
)

OPTIMUM = """
import json, sys
from transformers import AutoTokenizer
from optimum.onnxruntime import ORTModelForCausalLM
directory, file, io_binding = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
prompts, max_new_tokens = json.loads(sys.argv[4]), int(sys.argv[5])
tokenizer = AutoTokenizer.from_pretrained(directory)
model = ORTModelForCausalLM.from_pretrained(
    directory, file_name=file, use_cache=True, use_io_binding=io_binding
)
eos = model.generation_config.eos_token_id
pad = tokenizer.pad_token_id
if pad is None:
    pad = eos[0] if isinstance(eos, list) else eos
found = {"model": type(model).__name__, "pad_token_id": pad, "prompts": []}
for prompt in prompts:
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True,
            return_tensors="pt",
        )
        if not hasattr(ids, "shape"):  # a BatchEncoding in some versions
            ids = ids["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    found["prompts"].append(
        {"prompt_ids": ids[0].tolist(), "new_ids": out[0, ids.shape[1]:].tolist()}
    )
print(json.dumps(found))
"""


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where `a` and `b` differ (a length counts); None when equal."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def ours(
    directory: Path, prompts: list[str], max_new_tokens: int
) -> tuple[list[dict[str, Any]], bool]:
    """onnxport's prompt tokens and greedy new tokens, one prompt at a time; and whether the
    prompts went through a chat template."""
    generator = OnnxGenerator.open(directory, "fp32")
    results = []
    for prompt in prompts:
        generated = generator.generate(prompt, max_new_tokens=max_new_tokens)[0]
        results.append(
            {"prompt_ids": generator.prompt_ids(prompt), "new_ids": list(generated.token_ids)}
        )
    return results, generator.chat_template is not None


def optimum(
    venv: Path, directory: Path, file: str, prompts: list[str], max_new_tokens: int, io: bool
) -> tuple[dict[str, Any] | None, str]:
    """Optimum's answer, or None and its error."""
    done = subprocess.run(
        [
            *(str(venv / "bin" / "python"), "-c", OPTIMUM, str(directory), file),
            *("1" if io else "0", json.dumps(prompts), str(max_new_tokens)),
        ],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if done.returncode != 0:
        return None, "\n".join(done.stderr.strip().splitlines()[-12:])
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="a published text-generation directory")
    parser.add_argument("--prompt", action="append", help="a user message (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--io-binding", action="store_true", help="Optimum's use_io_binding")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/optimum-venv"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    prompts = args.prompt or list(PROMPTS)
    published = PublishedDirectory.open(args.output_dir)
    file = published.model_file("fp32").name
    expected, chat = ours(args.output_dir, prompts, args.max_new_tokens)
    versions = ensure_optimum(args.venv)
    found, log = optimum(
        args.venv, args.output_dir, file, prompts, args.max_new_tokens, args.io_binding
    )
    label = (
        f"Optimum {versions['optimum']} / optimum-onnx {versions['optimum-onnx']} "
        f"(transformers {versions['transformers']}) ORTModelForCausalLM({file}, "
        f"use_io_binding={args.io_binding})"
    )
    if found is None:
        print(f"FAIL  {label} cannot load or run {args.output_dir}:")
        print(log)
        return 1
    rows = []
    for prompt, mine, theirs in zip(prompts, expected, found["prompts"], strict=True):
        difference = first_difference(mine["new_ids"], theirs["new_ids"])
        rows.append(
            {
                "prompt": prompt,
                "same_prompt_ids": mine["prompt_ids"] == theirs["prompt_ids"],
                "prompt_tokens": len(theirs["prompt_ids"]),
                "onnxport_new": len(mine["new_ids"]),
                "optimum_new": len(theirs["new_ids"]),
                "equal": difference is None,
                "first_difference": difference,
                "onnxport_ids": mine["new_ids"],
                "optimum_ids": theirs["new_ids"],
            }
        )
    print(f"{label}: loaded {args.output_dir} as {found['model']}")
    how = "through the chat template" if chat else "raw (the directory has no chat template)"
    print(f"prompts {how}; greedy, up to {args.max_new_tokens} new tokens, one prompt at a time")
    print(
        f"{'prompt':<48} {'same prompt ids':>15} {'new tokens (ours/Optimum)':>26} "
        f"{'equal':>6} {'first difference':>17}"
    )
    for row in rows:
        where = "-" if row["first_difference"] is None else f"token {row['first_difference']}"
        print(
            f"{row['prompt'][:48]:<48} {row['same_prompt_ids']!s:>15} "
            f"{row['onnxport_new']:>12}/{row['optimum_new']:<13} {row['equal']!s:>6} "
            f"{where:>17}"
        )
    ok = all(r["equal"] and r["same_prompt_ids"] for r in rows)
    print(f"{'PASS' if ok else 'FAIL'}  {sum(r['equal'] for r in rows)}/{len(rows)} prompts equal")
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {"versions": versions, "model": label, "chat_template": chat, "rows": rows},
                indent=1,
            )
            + "\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
