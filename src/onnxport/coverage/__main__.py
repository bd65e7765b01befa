"""`python -m onnxport.coverage`: run the matrix and write docs/coverage.md.

With no options it runs every entry with the default settings (`make coverage`);
`--only bert/ --only vit --output /tmp/coverage.md` runs the entries whose names contain
either text and writes their page elsewhere.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

DEFAULT_OUTPUT = Path("docs/coverage.md")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m onnxport.coverage", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown page.")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="Run only entries whose name (`bert/masked-lm`) contains TEXT; repeatable.",
    )
    parser.add_argument("--workdir", type=Path, help="Scratch directory (default: a temp dir).")
    parser.add_argument("--list", action="store_true", help="List the entries and exit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log each stage.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    warnings.simplefilter("ignore")

    from transformers.utils import logging as hf_logging

    from onnxport.coverage.matrix import CoverageRow, run_matrix
    from onnxport.coverage.registry import ENTRIES, CoverageEntry
    from onnxport.coverage.table import render_coverage
    from onnxport.pipeline import library_versions

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # torch configures its loggers on import: quiet them after (torchvision notices).
    logging.getLogger("torch").setLevel(logging.ERROR)
    entries = [e for e in ENTRIES if not args.only or any(t in e.name for t in args.only)]
    if not entries:
        print(f"no coverage entry matches {args.only}; see --list", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(e.name for e in entries))
        return 0
    counter = itertools.count(1)

    def show(entry: CoverageEntry, row: CoverageRow) -> None:
        status = f"validated ({row.exporter})" if row.validated else f"FAILED: {row.reason}"
        print(
            f"[{next(counter)}/{len(entries)}] {entry.name} {row.seconds:.1f}s {status}", flush=True
        )

    with tempfile.TemporaryDirectory(prefix="onnxport-coverage-") as scratch:
        rows = run_matrix(entries, args.workdir or Path(scratch), on_row=show)
    versions = library_versions()
    environment = {
        name: versions[name] for name in ("torch", "transformers", "onnx", "onnxruntime")
    }
    environment["CPU cores"] = str(os.cpu_count())
    command = "python -m onnxport.coverage" + "".join(f" --only {t}" for t in args.only)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        render_coverage(rows, environment=environment, command=command), encoding="utf-8"
    )
    validated = sum(r.validated for r in rows)
    print(f"{validated}/{len(rows)} validated; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
