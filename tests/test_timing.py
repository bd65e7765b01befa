"""Interleaved timing and the machine it ran on: what a measured choice depends on."""

from __future__ import annotations

from pathlib import Path

from onnxport.verify.runtime import THREADS_ENV, create_session
from onnxport.verify.timing import default_threads, machine_record


def test_the_machine_record_names_the_cpu_and_its_instruction_sets() -> None:
    machine = machine_record()
    assert machine.cpu_model and machine.logical_cpus >= 1
    flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    for isa in machine.isa:
        assert f" {isa}" in flags, isa
    if " avx2 " in flags:
        assert "avx2" in machine.isa


def test_onnxport_threads_decides_the_threads_of_measurements_and_sessions(
    monkeypatch, exported
) -> None:
    monkeypatch.setenv(THREADS_ENV, "1")
    assert default_threads() == 1
    session = create_session(exported("distilbert-token").path)
    assert session.get_session_options().intra_op_num_threads == 1
    monkeypatch.delenv(THREADS_ENV)
    assert default_threads() >= 1
