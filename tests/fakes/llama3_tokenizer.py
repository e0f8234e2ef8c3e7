"""FAKE Llama 3 tokenizer for tests: the real special tokens with their real ids, and made-up ids
for everything else. It records how it was called, so tests can check that the prompt is encoded
without a second <|begin_of_text|>."""

from __future__ import annotations

import re
import zlib
from typing import Any

SPECIAL = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
}
_PIECES = re.compile("|".join(re.escape(s) for s in SPECIAL) + r"|\s*\S+|\s+")


class FakeLlama3Tokenizer:
    """`chat_template` is None, so the engine uses its own Llama 3 renderer."""

    chat_template = None
    unk_token_id = None

    def __init__(self, eos_token_id: Any = 128009, chat_template: str | None = None) -> None:
        self.eos_token_id = eos_token_id
        self.chat_template = chat_template
        self.encode_calls: list[dict[str, Any]] = []

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return SPECIAL.get(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encode_calls.append({"text": text, "add_special_tokens": add_special_tokens})
        ids = [SPECIAL["<|begin_of_text|>"]] if add_special_tokens else []
        for piece in _PIECES.findall(text):
            ids.append(SPECIAL.get(piece, zlib.crc32(piece.encode()) % 120000))
        return ids

    def apply_chat_template(self, conversation: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        # Stands for a template that differs from the built-in renderer, so a test can tell them apart.
        body = "".join(f"[{m['role']}]{m['content']}" for m in conversation)
        return "<|begin_of_text|>" + body + ("[assistant]" if add_generation_prompt else "")
