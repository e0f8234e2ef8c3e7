"""Llama 3 prompt format and stop-token discovery (expert_svc/engines/llama3.py)."""

from __future__ import annotations

import json

import pytest

from expert_svc.engines import llama3
from expert_svc.types import ChatMessage


class _Tok:
    def __init__(self, eos=None, vocab=None, unk=None):
        self.eos_token_id = eos
        self.vocab = vocab or {}
        self.unk_token_id = unk

    def convert_tokens_to_ids(self, token):
        return self.vocab.get(token, self.unk_token_id)


def test_render_llama3_chat_is_the_instruct_format():
    text = llama3.render_llama3_chat([ChatMessage("system", "Be brief."), ChatMessage("user", " Hi ")])
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="robot"):
        llama3.render_llama3_chat([ChatMessage("robot", "x")])


def test_stop_ids_read_from_the_tokenizer_vocabulary():
    tok = _Tok(eos=128009, vocab={"<|end_of_text|>": 128001, "<|eot_id|>": 128009, "<|eom_id|>": 128008})
    assert llama3.stop_token_ids(tok) == (128009, 128001, 128008)


def test_stop_ids_of_a_non_llama3_tokenizer_are_its_own():
    tok = _Tok(eos=2, vocab={}, unk=0)  # SmolLM2: eos <|im_end|> = 2, no Llama 3 tokens
    assert llama3.stop_token_ids(tok) == (2,)


def test_generation_config_adds_eos_ids(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    assert set(llama3.stop_token_ids(_Tok(eos=128009), tmp_path)) == {128001, 128008, 128009}


def test_defaults_when_nothing_names_an_eos(tmp_path):
    assert llama3.stop_token_ids(object(), tmp_path, None) == llama3.LLAMA3_DEFAULT_STOP_IDS == (128001, 128009)


def test_real_hf_tokenizer_encodes_the_template_with_one_begin_of_text():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, "hello": 1, "user": 2, "assistant": 3}
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", backend.token_to_id("<|begin_of_text|>"))]
    )
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                               eos_token="<|eot_id|>", unk_token="[UNK]")
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    text = llama3.render_chat(tok, [ChatMessage("user", "hello")])
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok.encode(text, add_special_tokens=False).count(bos) == 1
    assert tok.encode(text).count(bos) == 2  # what add_special_tokens=False prevents
    assert llama3.stop_token_ids(tok) == (tok.convert_tokens_to_ids("<|eot_id|>"),
                                          tok.convert_tokens_to_ids("<|end_of_text|>"))
