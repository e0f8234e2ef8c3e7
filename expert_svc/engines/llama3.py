"""Llama 3 prompt format and stop tokens, for engines that tokenize with the model's HF tokenizer.

The tokenizer's own chat template is the source of truth; the hand-written renderer here is the
fallback for tokenizers saved without one (some engine directories carry only tokenizer.json).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ..types import ChatMessage

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
EOM_ID = "<|eom_id|>"
EOT_ID = "<|eot_id|>"

# <|end_of_text|> and <|eot_id|> (identical ids in Llama 3.0 to 3.3); <|eom_id|> (128008) exists
# from 3.1 on and is found through the tokenizer when present.
LLAMA3_DEFAULT_STOP_IDS = (128001, 128009)

_STOP_TOKENS = (END_OF_TEXT, EOT_ID, EOM_ID)
_ROLES = ("system", "user", "assistant", "ipython", "tool")


def render_llama3_chat(messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
    """The Llama 3 instruct format: the text begins with <|begin_of_text|>, so it must be tokenized
    with add_special_tokens=False (else the tokenizer adds a second one)."""
    parts = [BEGIN_OF_TEXT]
    for message in messages:
        if message.role not in _ROLES:
            raise ValueError(f"unknown chat role {message.role!r}; expected one of {', '.join(_ROLES)}")
        parts.append(
            f"<|start_header_id|>{message.role}<|end_header_id|>\n\n{message.content.strip()}{EOT_ID}"
        )
    if add_generation_prompt:
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def render_chat(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """Render a conversation with the tokenizer's chat template, or the Llama 3 format without one."""
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": m.role, "content": m.content} for m in messages]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return render_llama3_chat(messages)


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of a special token, or None when the vocabulary does not have it."""
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is None:
        return None
    token_id = convert(token)
    if not isinstance(token_id, int) or token_id < 0:
        return None
    if token_id == getattr(tokenizer, "unk_token_id", None):
        return None
    return token_id


def _as_ids(value: Any) -> Iterable[int]:
    if isinstance(value, bool):
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return ()


def generation_config_eos_ids(model_dir: str | os.PathLike[str] | None) -> tuple[int, ...]:
    """`eos_token_id` of generation_config.json (Llama 3.1 lists 128001, 128008 and 128009)."""
    if model_dir is None:
        return ()
    path = os.path.join(model_dir, "generation_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return ()
    return tuple(_as_ids(data.get("eos_token_id")))


def stop_token_ids(tokenizer: Any, *model_dirs: str | os.PathLike[str] | None) -> tuple[int, ...]:
    """Every token id that ends a Llama 3 turn, read from the tokenizer and generation configs.

    Falls back to 128001 and 128009 only when neither names any end-of-sequence token.
    """
    ids: list[int] = []

    def add(values: Iterable[int]) -> None:
        for v in values:
            if v not in ids:
                ids.append(v)

    add(_as_ids(getattr(tokenizer, "eos_token_id", None)))
    for token in _STOP_TOKENS:
        token_id = _token_id(tokenizer, token)
        if token_id is not None:
            add((token_id,))
    for model_dir in model_dirs:
        add(generation_config_eos_ids(model_dir))
    return tuple(ids) if ids else LLAMA3_DEFAULT_STOP_IDS
