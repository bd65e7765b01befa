"""PyTorch's answers: in float32, and in float64 for the error budget, or why not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from onnxport.pipeline import convert
from onnxport.request import ConversionRequest
from onnxport.request.config import ConversionConfig
from onnxport.sources import load_source
from onnxport.verify.references import add_exact_answers, compute_references

SHAPES = [(1, 8), (2, 13)]


class _InFloat32(torch.nn.Module):
    """Model code that insists on float32 whatever its weights are. Its casts to float32
    keep float64 in the float64 run (`references._StaysFloat64`); a half-precision cast
    does not."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs).logits.to(self.dtype)


class _NoFloat64Kernel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        if next(self.parameters()).dtype == torch.float64:
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Double'")
        return self.inner(*args, **kwargs)


def test_float64_answers_are_close_to_float32_and_the_module_is_restored(checkpoint) -> None:
    source = load_source(checkpoint("distilbert-token"))
    before = {k: v.clone() for k, v in source.module.state_dict().items()}
    references, skipped = add_exact_answers(
        source, compute_references(source, SHAPES), max_weights_gb=1.0
    )
    assert skipped is None
    for ref in references:
        assert ref.exact is not None and ref.exact["logits"].dtype == np.float64
        assert np.abs(ref.exact["logits"] - ref.outputs["logits"]).max() < 1e-5
    after = source.module.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_why_float64_did_not_run_is_said(checkpoint) -> None:
    source = load_source(checkpoint("distilbert-token"))
    references = compute_references(source, SHAPES)
    too_big = add_exact_answers(source, references, max_weights_gb=0.0)
    assert too_big[1] is not None and "validation.float64_max_weights_gb 0" in too_big[1]
    no_kernel = dataclasses.replace(source, module=_NoFloat64Kernel(source.module))
    assert "PyTorch cannot run it in float64: RuntimeError" in (
        add_exact_answers(no_kernel, references, max_weights_gb=1.0)[1] or ""
    )
    insists = dataclasses.replace(source, module=_InFloat32(source.module, torch.float16))
    assert "computes 'logits' in torch.float16 even when cast to float64" in (
        add_exact_answers(insists, references, max_weights_gb=1.0)[1] or ""
    )
    # A cast to float32 in model code stays float64: the answer is float64 throughout.
    kept, skipped = add_exact_answers(
        dataclasses.replace(source, module=_InFloat32(source.module)),
        references,
        max_weights_gb=1.0,
    )
    assert skipped is None and all(v.dtype == np.float64 for r in kept for v in r.exact.values())
    assert all(r.exact is None for r in too_big[0])
    assert next(source.module.parameters()).dtype == torch.float32


def test_a_conversion_without_float64_is_judged_by_the_tolerance_and_says_why(
    checkpoint, tmp_path: Path
) -> None:
    config = ConversionConfig().with_overrides(
        onnx={"exporter": "torchscript"}, validation={"float64_max_weights_gb": 0}
    )
    manifest = convert(
        ConversionRequest(
            source_path=checkpoint("distilbert-token"), output_dir=tmp_path / "o", config=config
        )
    )
    validation = manifest.outputs[0].validation
    assert validation is not None and validation.yardstick is not None
    assert validation.yardstick.mode == "tolerance"
    assert "float64_max_weights_gb" in (validation.yardstick.reason or "")
    assert validation.outputs["logits"].budget == []
    explicit = ConversionConfig().with_overrides(
        onnx={"exporter": "torchscript"}, validation={"atol": 1e-3}
    )
    manifest = convert(
        ConversionRequest(
            source_path=checkpoint("distilbert-token"), output_dir=tmp_path / "a", config=explicit
        )
    )
    yardstick = manifest.outputs[0].validation.yardstick  # type: ignore[union-attr]
    assert yardstick is not None and yardstick.mode == "tolerance"
    assert yardstick.reason == "validation.atol/rtol set"
