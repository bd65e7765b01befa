"""The one set of typed records: each stage returns its record, the manifest is made of them,
and nothing edits one afterwards (they are frozen). Adding a manifest field is one edit here.

Other tools read `manifest.json`, so keys are only ever added, never renamed; a record keeps
keys it does not know (a newer onnxport's), so reading and writing back loses nothing.
The records are grouped by what they describe, one module each: `source`, `export`,
`validation`, `divergence`, `outputs` (with the search), `verification`, `benchmark`.
This package imports no torch and no ONNX Runtime: a server reads these records too.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    # A field whose key predates its name (`alias`) is written under its key and read under
    # either.
    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        ser_json_inf_nan="strings",
        serialize_by_alias=True,
        validate_by_alias=True,
        validate_by_name=True,
    )
