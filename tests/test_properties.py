"""Properties of config parsing and fingerprinting, over configs hypothesis makes up.

- any valid `conversion.yaml` round-trips: parse, dump, parse again gives the same config;
- equal configs give equal `conv_fp`, whatever the key order, spelling (aliases, defaults
  written out) or YAML formatting;
- a config that differs in any setting that shapes the output gives another `conv_fp`,
  and only the execution settings (the child's timeout) leave it alone.
"""

from __future__ import annotations

import string
from typing import Any

import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from onnxport.request.config import ConversionConfig, parse_conversion_config
from onnxport.request.export_config import (
    DEFAULT_OPSET,
    EXPORTER_OPSETS,
    MAX_OPSET,
    MIN_OPSET,
    Exporter,
    ExternalData,
    OptimizeLevel,
    Quantization,
)
from onnxport.request.fingerprints import conversion_fingerprint
from onnxport.request.validation_config import Yardstick
from onnxport.tasks import Task

SPEC, EXEC = "abc123", "def456"
NAME_CHARS = string.ascii_letters + string.digits + "_-"
QUANTIZATION_SPELLINGS = {
    "none": ["none", "NONE", " none "],
    "int8": ["int8", "dynamic", "int8-dynamic", "INT8"],
    "int8-static": ["int8-static", "static"],
    "fp16": ["fp16", "FP16"],
    "int4": ["int4", "INT4"],
    "int8-weights": ["int8-weights", "INT8-WEIGHTS"],
    "auto": ["auto", "AUTO"],
}


def _floats(low: float, high: float | None = None, *, exclude_low: bool = False):
    return st.floats(
        min_value=low,
        max_value=high,
        exclude_min=exclude_low,
        allow_nan=False,
        allow_infinity=high is None and not exclude_low,
    )


names = st.text(NAME_CHARS, min_size=1, max_size=12)
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
paths = st.builds(lambda parts: "/".join(parts), st.lists(names, min_size=1, max_size=3))
zero = st.sampled_from([0.0, -0.0])  # YAML may well say `-0.0`

SECTIONS: dict[str, dict[str, st.SearchStrategy]] = {
    "target": {"format": st.just("onnx")},
    "onnx": {
        "opset_version": st.integers(MIN_OPSET, MAX_OPSET),
        "quantization": st.sampled_from(sorted(QUANTIZATION_SPELLINGS)),
        "optimize": st.sampled_from([o.value for o in OptimizeLevel]),
        "run_smoke_test": st.booleans(),
        "exporter": st.sampled_from([e.value for e in Exporter]),
        "repeat_layers": st.booleans(),
    },
    "output": {
        "filename_pattern": st.builds(
            lambda a, b: f"{a}{{quantization}}{b}.onnx",
            st.text(NAME_CHARS, max_size=8),
            st.text(NAME_CHARS, max_size=8),
        ),
        "external_data": st.sampled_from([e.value for e in ExternalData]),
        "keep_debug_metadata": st.booleans(),
    },
    "validation": {
        "shapes": st.none()
        | st.lists(
            st.tuples(st.integers(1, 65536), st.integers(1, 65536)).map(list),
            min_size=1,
            max_size=4,
        ),
        "mode": st.none() | st.sampled_from([y.value for y in Yardstick]),
        "max_error_ratio": _floats(0.0, 1000.0, exclude_low=True),
        "float64_max_weights_gb": zero | _floats(0.0, 1000.0),
        "atol": st.none() | _floats(0.0, 10.0, exclude_low=True),
        "rtol": st.none() | zero | _floats(0.0, 10.0),
        "min_task_agreement": zero | _floats(0.0, 1.0),
        "seed": st.integers(-(2**40), 2**40),
        "localize": st.booleans(),
        "eval_file": st.none() | paths.map(lambda p: f"/nonexistent/{p}.jsonl"),
        "max_metric_drop": _floats(0.0, 1.0),
        "generate_tokens": st.integers(0, 4096),
        "min_next_token_agreement": _floats(0.0, 1.0),
        "max_perplexity_increase": _floats(0.0, 10.0),
    },
    "quantize": {
        "per_channel": st.booleans(),
        "reduce_range": st.booleans(),
        "nodes_to_exclude": st.lists(names, max_size=3),
        "op_types": st.none() | st.lists(names, max_size=3),
        # Files that do not exist: an existing one adds its checksum to conv_fp.
        "calibration_file": st.none() | paths.map(lambda p: f"/nonexistent/{p}.txt"),
        "calibration_samples": st.integers(1, 10000),
        "on_failure": st.sampled_from(["fail", "skip"]),
        "search_budget_seconds": _floats(0.0, 1e6, exclude_low=True),
        "max_excluded_nodes": st.integers(0, 100),
        "block_size": st.sampled_from([16, 32, 64, 128, 256]),
        "symmetric": st.booleans(),
        "accuracy_level": st.integers(0, 4),
        "lm_head": st.sampled_from(["int4", "int8", "float"]),
    },
    "source": {
        "task": st.none() | st.sampled_from([t.value for t in Task]),
        "allow_pickle": st.booleans(),
        "trust_remote_code": st.booleans(),
        "factory": st.none() | st.builds(lambda m, f: f"{m}:{f}", identifiers, identifiers),
        "input_spec": st.none() | paths.map(lambda p: f"{p}.yaml"),
    },
    "execution": {
        "timeout_seconds": _floats(0.0, 1e9, exclude_low=True),
        "isolate_export": st.sampled_from(["auto", "always", "never"]),
        "export_cache": st.booleans(),
    },
}


def _compatible(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with an exporter named only beside an opset it writes: the others are refused
    (test_config), so a draw of one becomes `exporter: auto`."""
    onnx = data.get("onnx", {})
    opsets = EXPORTER_OPSETS.get(Exporter(onnx.get("exporter", Exporter.AUTO.value)))
    if opsets is not None and onnx.get("opset_version", DEFAULT_OPSET) not in opsets:
        return {**data, "onnx": {**onnx, "exporter": Exporter.AUTO.value}}
    return data


@st.composite
def config_data(draw) -> dict[str, Any]:
    """The mapping a valid conversion.yaml holds: any sections, any keys of each."""
    data: dict[str, Any] = {}
    for section, keys in SECTIONS.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(sorted(keys)), unique=True))
            data[section] = {key: draw(keys[key]) for key in chosen}
    return _compatible(data)


def _fp(config: ConversionConfig) -> str:
    return conversion_fingerprint(SPEC, EXEC, config)


def _parse(data: Any) -> ConversionConfig:
    return parse_conversion_config(data, origin="hypothesis")


def _reordered(value: Any, draw) -> Any:
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        return {k: _reordered(value[k], draw) for k in keys}
    if isinstance(value, list):
        return [_reordered(v, draw) for v in value]
    return value


# --------------------------------------------------------------------------- round trips


@settings(max_examples=100, deadline=None)
@given(config_data())
def test_any_valid_config_round_trips_through_yaml(data: dict[str, Any]) -> None:
    config = _parse(data)
    dumped = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    again = _parse(yaml.safe_load(dumped))
    assert again == config
    assert again.model_dump(mode="json") == config.model_dump(mode="json")
    assert _fp(again) == _fp(config)
    # And the user's own file, as written, gives the same config.
    assert _parse(yaml.safe_load(yaml.safe_dump(data))) == config


@settings(max_examples=60, deadline=None)
@given(config_data())
def test_a_config_written_out_in_full_is_the_same_config(data: dict[str, Any]) -> None:
    """Defaults left out or spelt out: the same config, the same fingerprint."""
    config = _parse(data)
    full = _parse(ConversionConfig().model_dump(mode="json") | config.model_dump(mode="json"))
    assert full == config
    assert _fp(full) == _fp(config)


# ------------------------------------------------------------ equal configs, equal fingerprints


@settings(max_examples=100, deadline=None)
@given(config_data(), st.data())
def test_key_order_and_formatting_never_change_the_fingerprint(
    data: dict[str, Any], draws: st.DataObject
) -> None:
    reordered = _reordered(data, draws.draw)
    style = draws.draw(st.sampled_from([{}, {"default_flow_style": True}, {"indent": 4}]))
    text = yaml.safe_dump(reordered, sort_keys=False, **style)
    a, b = _parse(data), _parse(yaml.safe_load(text))
    assert a == b
    assert _fp(a) == _fp(b)


@settings(max_examples=80, deadline=None)
@given(config_data(), st.data())
def test_equal_settings_spelt_differently_give_equal_fingerprints(
    data: dict[str, Any], draws: st.DataObject
) -> None:
    # Every draw names a quantization (no assume(): filtering most draws away fails
    # Hypothesis's health check on a slow machine).
    canonical = draws.draw(st.sampled_from(sorted(QUANTIZATION_SPELLINGS)))
    data = {**data, "onnx": {**data.get("onnx", {}), "quantization": canonical}}
    other = {**data, "onnx": dict(data["onnx"])}
    spelling = draws.draw(st.sampled_from(QUANTIZATION_SPELLINGS[canonical]))
    other["onnx"]["quantization"] = spelling
    assert _parse(other) == _parse(data)
    assert _fp(_parse(other)) == _fp(_parse(data))


@given(st.sampled_from(["rtol", "min_task_agreement"]))
def test_zero_and_negative_zero_are_the_same_setting(key: str) -> None:
    a = _parse({"validation": {key: 0.0}})
    b = _parse({"validation": {key: -0.0}})
    assert a == b
    assert _fp(a) == _fp(b)


# ------------------------------------------------------- different settings, another fingerprint


def _leaves() -> list[tuple[str, str]]:
    return [(section, key) for section, keys in SECTIONS.items() for key in keys]


@settings(max_examples=200, deadline=None)
@given(config_data(), st.sampled_from(_leaves()), st.data())
def test_changing_any_one_setting_changes_the_fingerprint_unless_it_is_execution(
    data: dict[str, Any], leaf: tuple[str, str], draws: st.DataObject
) -> None:
    section, key = leaf
    base = _parse(data)
    changed_data = {**data, section: {**data.get(section, {})}}
    changed_data[section][key] = draws.draw(SECTIONS[section][key])
    changed = _parse(_compatible(changed_data))
    assume(changed != base)  # the draw may repeat the value, or spell it another way
    if section == "execution":
        assert _fp(changed) == _fp(base)
    else:
        assert _fp(changed) != _fp(base), f"{section}.{key} is not in the fingerprint"


@settings(max_examples=100, deadline=None)
@given(config_data(), config_data())
def test_distinct_configs_have_distinct_fingerprints(a: dict, b: dict) -> None:
    config_a, config_b = _parse(a), _parse(b)
    semantic_a = config_a.model_dump(mode="json", exclude={"execution"})
    semantic_b = config_b.model_dump(mode="json", exclude={"execution"})
    assert (_fp(config_a) == _fp(config_b)) == (semantic_a == semantic_b)


@given(
    st.text(string.hexdigits, min_size=4, max_size=12),
    st.text(string.hexdigits, min_size=4, max_size=12),
)
def test_the_parent_fingerprints_are_part_of_conv_fp(spec: str, exec_: str) -> None:
    config = ConversionConfig()
    assume((spec.lower(), exec_.lower()) != (SPEC, EXEC))
    assert conversion_fingerprint(spec, exec_, config) != _fp(config)
    assert conversion_fingerprint(spec.upper(), exec_.upper(), config) == conversion_fingerprint(
        spec.lower(), exec_.lower(), config
    )


def test_the_strategy_covers_every_setting() -> None:
    """A new setting in ConversionConfig must be added to SECTIONS, or it goes untested."""
    for section, model in ConversionConfig.model_fields.items():
        assert section in SECTIONS, section
        fields = set(model.annotation.model_fields)  # type: ignore[union-attr]
        assert fields == set(SECTIONS[section]), (section, fields ^ set(SECTIONS[section]))
    assert {q.value for q in Quantization} == set(QUANTIZATION_SPELLINGS)
