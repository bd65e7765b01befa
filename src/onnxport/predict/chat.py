"""A prompt as a chat model reads it: the checkpoint's chat template, rendered as
transformers' `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`
renders it, with jinja2 alone.

A template is code from the model's author: it runs in jinja2's immutable sandbox, as
transformers runs it, with the same settings (blocks trimmed, loop controls) and the same
helpers (`raise_exception`, `strftime_now`, a `tojson` that does not escape HTML).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from onnxport.errors import PredictError, one_line

CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""Where transformers 5 saves a tokenizer's chat template (4 kept it in tokenizer_config.json)."""
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
"""The special tokens a template may name, as transformers passes them to it."""


def chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The chat template of a directory: chat_template.jinja, else tokenizer_config.json's
    `chat_template` (its "default" one when it holds several by name); None without one."""
    path = directory / CHAT_TEMPLATE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise PredictError(f"the model's chat template does not compile: {one_line(e)}") from e


def render_chat(template: str, prompt: str, special_tokens: dict[str, str]) -> str:
    """`prompt` as the user's one message, and the assistant's turn opened after it.

    Args:
        template: the chat template (`chat_template`).
        prompt: the user's message.
        special_tokens: the tokenizer's special tokens by name (`bos_token`, `eos_token`, ...).
    """
    try:
        return _compiled(template).render(
            messages=[{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tools=None,
            documents=None,
            **special_tokens,
        )
    except jinja2.exceptions.TemplateError as e:
        raise PredictError(
            f"the model's chat template refused the prompt: {one_line(e)}",
            hint="send the prompt as it is, without the template (raw=True)",
        ) from e
