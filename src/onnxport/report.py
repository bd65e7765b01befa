"""Render a `Manifest` as Markdown: the `report.md` beside every published model."""

from __future__ import annotations

from onnxport.manifest import Manifest


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    return f"{num_bytes / 1e6:.1f} MB"


def render_markdown(manifest: Manifest) -> str:
    source = manifest.source
    lines = [
        f"# onnxport conversion: {source.architecture}",
        "",
        f"- source: `{source.path}` ({source.kind}, task {source.task}, "
        f"{source.num_parameters:,} parameters)",
        f"- exporter: {manifest.export.exporter}, opset {manifest.export.opset}",
        f"- created: {manifest.created_at} with onnxport {manifest.onnxport_version}",
    ]
    if manifest.conv_fp:
        lines.append(f"- conversion fingerprint: `{manifest.conv_fp}`")
    for key, value in sorted(manifest.lineage.items()):
        lines.append(f"- {key}: `{value}`")
    lines += [
        "",
        "## Outputs",
        "",
        "| file | variant | published | size | validated | task agreement |",
        "|---|---|---|---|---|---|",
    ]
    for out in manifest.outputs:
        v = out.validation
        agreement = (
            f"{v.task_agreement.metric} {v.task_agreement.value:.4f} "
            f"(min {v.task_agreement.minimum:g})"
            if v
            else "-"
        )
        validated = "-" if v is None else ("yes" if v.passed else "NO")
        lines.append(
            f"| {out.file} | {out.variant} | {'yes' if out.published else 'no'} | "
            f"{_size(out.size_bytes)} | {validated} | {agreement} |"
        )
    lines += ["", "## Validation against PyTorch", ""]
    for out in manifest.outputs:
        if out.validation is None:
            continue
        shapes = ", ".join(str(s) for s in out.validation.shapes)
        lines += [
            f"### {out.variant} (shapes {shapes})",
            "",
            "| output | max abs diff | max rel diff | atol | rtol | within tolerance |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in out.validation.outputs.items():
            lines.append(
                f"| {name} | {c.max_abs_diff:.3g} | {c.max_rel_diff:.3g} | {c.atol:g} | "
                f"{c.rtol:g} | {'yes' if c.passed else 'no'} |"
            )
        lines.append("")
    lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in manifest.timings.items()]
    if manifest.peak_rss_mb is not None:
        lines += ["", f"Peak memory (RSS): {manifest.peak_rss_mb:.0f} MB"]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in manifest.versions.items()]
    return "\n".join(lines) + "\n"
