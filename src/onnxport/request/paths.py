"""The platform's directory conventions: training outputs in, conversion outputs out.

Training writes `outputs/final_training/<env>/<backbone>/spec_<fp>_exec_<fp>/v<n>/` with a
`checkpoint/` and a `metadata.json`; a conversion of it goes to
`<root>/outputs/conversion/<platform>/<backbone>/spec_<fp>_exec_<fp>/v<n>/conv_<conv_fp>/`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxport.errors import ConfigError, SourceError

logger = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoint"
METADATA_FILENAME = "metadata.json"
_TRAINING_ID = re.compile(r"^spec_(?P<spec>[0-9a-fA-F]+)_exec_(?P<exec>[0-9a-fA-F]+)$")
_VERSION = re.compile(r"^v(?P<n>\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ParentTrainingOutput:
    path: Path
    checkpoint: Path
    backbone: str
    version: str
    """The training run's `v<n>` (without the `v`): the platform's name for one run of a
    training spec (its "variant"), never a published model's variant (`Variant`)."""
    metadata: dict[str, Any]

    @property
    def training_id(self) -> str:
        return f"{self.path.parent.name}/v{self.version}"


def safe_segment(name: str) -> str:
    """A name usable as one path segment (`google/bert` -> `google--bert`)."""
    cleaned = _UNSAFE.sub("-", name.replace("/", "--")).strip(".-")
    return cleaned or "model"


def _read_metadata(path: Path) -> dict[str, Any] | None:
    file = path / METADATA_FILENAME
    if not file.is_file():
        logger.warning("%s has no %s", path, METADATA_FILENAME)
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        logger.warning("%s is not valid JSON (%s)", file, e)
        return None
    if not isinstance(data, dict):
        logger.warning("%s does not hold a JSON object", file)
        return None
    return data


def read_parent_training_output(
    path: Path, *, parent_spec_fp: str, parent_exec_fp: str
) -> ParentTrainingOutput:
    """Read a training output directory; its fingerprints must agree with the given ones."""
    path = Path(path).absolute()
    try:
        found = path.is_dir()
        broken = next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)
    except OSError as e:  # a name too long, a directory we may not read
        raise SourceError(
            f"cannot read the parent training output {path}: {e.strerror or e}"
        ) from e
    if broken is not None:
        raise SourceError(
            f"the parent training output {path} goes through {broken}, a symbolic link that "
            "leads nowhere (dangling, or a loop)",
            hint="pass the training run's output directory itself",
        )
    if not found:
        raise SourceError(
            f"parent training output not found: {path}",
            hint="pass the training run's output directory (…/spec_<fp>_exec_<fp>/v<n>)",
        )
    checkpoint = path / CHECKPOINT_DIRNAME
    if checkpoint.is_symlink() and not checkpoint.exists():
        raise SourceError(
            f"{checkpoint} is a symbolic link that leads nowhere (dangling, or a loop)",
            hint="point it at the saved checkpoint",
        )
    if not checkpoint.is_dir():
        raise SourceError(
            f"{path} has no {CHECKPOINT_DIRNAME}/ directory",
            hint="check that the training run finished and saved its checkpoint",
        )
    version_match = _VERSION.match(path.name)
    version = version_match.group("n") if version_match else "1"
    id_match = _TRAINING_ID.match(path.parent.name)
    if id_match:
        found = (id_match.group("spec").lower(), id_match.group("exec").lower())
        if found != (parent_spec_fp.lower(), parent_exec_fp.lower()):
            raise ConfigError(
                f"the fingerprints given (spec {parent_spec_fp}, exec {parent_exec_fp}) do not "
                f"match the training output path {path.parent.name}",
                hint="pass the fingerprints of that training run",
            )
    metadata = _read_metadata(path)
    backbone = (metadata or {}).get("backbone")
    if not isinstance(backbone, str) or not backbone.strip():
        backbone = path.parent.parent.name if id_match else path.name
        logger.warning(
            "no backbone in %s/%s; using the path's segment %r", path, METADATA_FILENAME, backbone
        )
    return ParentTrainingOutput(
        path=path,
        checkpoint=checkpoint,
        backbone=backbone,
        version=version,
        metadata=metadata or {},
    )


def conversion_output_dir(
    root_dir: Path,
    *,
    platform: str,
    backbone: str,
    parent_spec_fp: str,
    parent_exec_fp: str,
    version: str,
    conv_fp: str,
) -> Path:
    return (
        Path(root_dir).absolute()
        / "outputs"
        / "conversion"
        / safe_segment(platform)
        / safe_segment(backbone)
        / f"spec_{parent_spec_fp}_exec_{parent_exec_fp}"
        / f"v{version}"
        / f"conv_{conv_fp}"
    )
