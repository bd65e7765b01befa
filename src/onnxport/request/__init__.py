"""What a conversion is asked to do: the typed settings (`config`), the fingerprints that name
it (`fingerprints`), where its inputs and outputs live (`paths`), which platform it runs on
(`hosting`), and the lineage that ties it to its training run (`lineage`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onnxport.request.config import ConversionConfig, check_named_files


@dataclass(frozen=True)
class ConversionRequest:
    """Everything one conversion needs; the CLI and the orchestration layer both build one."""

    source_path: Path
    output_dir: Path
    config: ConversionConfig = field(default_factory=ConversionConfig)
    force: bool = False
    refresh_export_cache: bool = False
    """Export even when the export cache holds the graph, and store it again."""
    conv_fp: str | None = None
    lineage: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_named_files(self.config)
