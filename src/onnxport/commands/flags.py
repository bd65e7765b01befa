"""A command's flags in the library's messages.

The library speaks to Python-API and platform users in config keys (`source.task`,
`execution.export_cache: false`) and arguments (`force=True`). Where a command prints such
a message, it says its own flag for each: beside a config key, which the command's config
file also takes (`source.task (--task)`), and instead of an argument (`--force`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FlagNames:
    """How a command's user sets what a message names.

    Args:
        keys: config key -> the flag that sets it; a boolean key named with its value is
            said as the flag (`: true`) or its `--no-` form (`: false`).
        arguments: an argument as the library writes it (`force=True`) -> the flag.
    """

    keys: Mapping[str, str] = field(default_factory=dict)
    arguments: Mapping[str, str] = field(default_factory=dict)

    def said(self, text: str) -> str:
        """`text` with each flag said where the key or argument it sets is named."""
        for argument, flag in self.arguments.items():
            text = text.replace(argument, flag)
        if not self.keys:
            return text
        # Longest first, whole names only: `source.input_spec` is not a key `source.input`.
        names = "|".join(re.escape(k) for k in sorted(self.keys, key=len, reverse=True))
        pattern = rf"(?<![\w.])(?P<key>{names})(?![\w])(?::[ ]?(?P<value>true|false)\b)?"
        return re.sub(pattern, self._beside, text)

    def _beside(self, found: re.Match[str]) -> str:
        flag = self.keys[found["key"]]
        if found["value"] == "false":
            flag = "--no-" + flag.removeprefix("--")
        return f"{found[0]} ({flag})"


NO_FLAGS = FlagNames()
