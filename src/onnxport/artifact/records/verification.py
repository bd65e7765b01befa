"""`onnxport verify`: published models proven again against their checkpoint."""

from __future__ import annotations

from pydantic import Field, computed_field

from onnxport.artifact.records import Record
from onnxport.artifact.records.divergence import DivergenceRecord
from onnxport.artifact.records.validation import ValidationRecord
from onnxport.names import Variant


class VerifiedModelRecord(Record):
    """One ONNX model proven again against its checkpoint (`onnxport verify`), by the rules
    of a conversion: the fp32 model's values and task agreement, a variant's task agreement."""

    file: str
    variant: Variant
    proven: bool
    validation: ValidationRecord
    divergence: DivergenceRecord | None = Field(None, alias="localization")
    """Where a refused model diverges from PyTorch (or a variant from the fp32 model)."""

    def refusal(self) -> str:
        """Why it was refused, on one line: the failures, then where it diverges."""
        failures = self.validation.failures
        found = failures[0] if failures else "refused"
        if len(failures) > 1:
            found += f" (and {len(failures) - 1} more)"
        if self.divergence is not None:
            found += f"; {self.divergence.summary()}"
        return f"{self.file} ({self.variant}): {found}"


class VerificationRecord(Record):
    """`onnxport verify`: a published directory's checksums, then the proof of each of its
    models; or the proof of one ONNX file, against a checkpoint."""

    target: str
    """The directory or the ONNX file verified."""
    against: str
    """The checkpoint the models were proven against."""
    files: int = 0
    """How many files were checked against the manifest's checksums (0: an ONNX file)."""
    checksum_problems: list[str] = Field(default_factory=list)
    """Files of the directory missing or unlike their checksum; the models are then not run
    (their numbers would prove nothing about the files the manifest proved)."""
    models: list[VerifiedModelRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    """How a file made elsewhere was fitted to the checkpoint (names matched by order,
    validation shapes set to the sizes the graph fixes), and what else a reader should know."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def proven(self) -> bool:
        """Intact, and every model proven."""
        return (
            not self.checksum_problems and bool(self.models) and all(m.proven for m in self.models)
        )
