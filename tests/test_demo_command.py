"""`onnxport demo` end to end: the trained tagger (cached), `execute_conversion` with
optimization and int8, the held-out entity F1 of each model, the benchmark, the report and the
MLflow store; a second run reuses the conversion and the benchmark."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from onnxport.artifact.manifest import read_manifest, verify_directory

pytestmark = pytest.mark.slow


def _f1(stdout: str, model: str) -> float:
    found = re.search(rf"{model}\s*│\s*([0-9.]+)", stdout)
    assert found, f"no entity F1 row for {model}:\n{stdout}"
    return float(found.group(1))


def _stage_seconds(stdout: str) -> dict[str, str]:
    """The "seconds per stage" table's cells, by stage."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("┃ load"))
    names = [cell.strip() for cell in lines[header].strip("┃").split("┃")]
    values = [cell.strip() for cell in lines[header + 2].strip("│").split("│")]
    return dict(zip(names, values, strict=True))


def test_demo_tells_the_whole_story_and_reuses_it(cli, demo_cache, tmp_path) -> None:
    root = tmp_path / "demo"
    run = cli("demo", "--root", root, "--cache-dir", demo_cache)
    assert run.code == 0, run.stderr
    # Progress from the child's events, the lines `onnxport convert` prints; its log lines
    # (`12:00:00 INFO onnxport.pipeline: ...`) only with -v.
    conversion = run.stderr.split("2/4", 1)[1].split("3/4", 1)[0].splitlines()
    progress = [line.strip() for line in conversion if line.strip()[:1] in "…✓✗"]
    assert [line.split(" ", 1)[1] for line in progress if line.startswith("…")] == [
        "load source",
        "export to ONNX",
        "optimize",
        "validate against PyTorch",
        "quantize and validate the variant",
        "smoke test",
        "publish",
        "log to MLflow",
    ]
    assert len([line for line in progress if line.startswith("✓")]) == 8, progress

    assert not any(re.match(r"\s*\d\d:\d\d:\d\d INFO ", line) for line in conversion)
    report = re.search(r"report:\s+(\S+report\.html)", run.stdout)
    assert report, run.stdout
    output = Path(report.group(1)).parent
    manifest = read_manifest(output)
    assert verify_directory(output) == []
    # One clock per stage: the publish time of the progress line is the manifest's and the
    # table's (logging to MLflow, timed on its own line, is not part of it).
    publish = manifest.timings["publish"]
    assert re.search(r"✓ publish ([0-9.]+) s", run.stderr).group(1) == f"{publish:.1f}"
    assert _stage_seconds(run.stdout)["publish"] == f"{publish:.2f}"
    assert [o.variant for o in manifest.published_outputs()] == ["fp32", "int8"]
    assert manifest.outputs[0].passes[0].name == "optimize-extended"
    # The held-out entity F1 of each model, int8 within one point of PyTorch.
    pytorch, fp32, int8 = (_f1(run.stdout, m) for m in ("pytorch", "onnx fp32", "onnx int8"))
    assert pytorch > 0.9 and abs(fp32 - pytorch) < 0.005 and abs(int8 - pytorch) <= 0.01
    # The benchmark table, recorded in the manifest and rendered into the HTML report.
    assert "speed-up vs PyTorch" in run.stdout
    runtimes = {t.runtime for t in manifest.benchmark.timings}
    assert runtimes == {"pytorch", "fp32", "int8"}
    html = (output / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "int8" in html
    assert (root / "mlflow.db").is_file() and "mlflow ui --backend-store-uri sqlite:///" in (
        run.stdout
    )

    again = cli("demo", "--root", root, "--cache-dir", demo_cache)
    assert again.code == 0, again.stderr
    assert "reusing the recorded benchmark" in again.stderr
    assert "… load source" not in again.stderr  # reused: no child, no progress
    assert read_manifest(output).created_at == manifest.created_at, "the conversion was redone"
