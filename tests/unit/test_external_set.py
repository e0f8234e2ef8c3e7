"""The external evaluation set's parsers and the checks that bind hand labels to their texts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from router_svc.training import external


def test_faq_questions_are_underlined_question_headings() -> None:
    rst = ("Programming FAQ\n===============\n\nHow do I copy a list?\n---------------------\n\ntext\n\n"
           "Not a question\n--------------\n\nWhy?\n\n")
    assert external.parse_faq_questions(rst) == ["How do I copy a list?"]


def test_sharegpt_parser_reads_a_truncated_array() -> None:
    whole = [{"id": "a_0", "conversations": [{"from": "human", "value": "first  question"},
                                             {"from": "gpt", "value": "answer"}]},
             {"id": "b_0", "conversations": [{"from": "gpt", "value": "no human turn"}]}]
    data = (json.dumps(whole)[:-1] + ', {"id": "c_0", "conversations": [{"from": "hu').encode()
    assert external.parse_sharegpt_first_turns(data) == {"a_0": ["first  question"]}


def test_labels_bind_to_their_text_digest() -> None:
    turns = {"a_0": ["What is  a tuple?"]}
    digest = external.text_digest("What is a tuple?")
    [example] = external.label_sharegpt(turns, [("a_0", "code", digest)])
    assert (example.text, example.label, example.source) == ("What is a tuple?", "code", "sharegpt")
    with pytest.raises(ValueError, match="do not match"):
        external.label_sharegpt(turns, [("a_0", "code", "0" * 16)])


def test_label_file_rejects_unknown_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text("# comment\na_0\tpoetry\t0123456789abcdef\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        external.read_label_file(path)


def test_packaged_label_file_is_valid_and_has_every_expert() -> None:
    rows = external.read_label_file(external.SHAREGPT_LABELS)
    assert len(rows) >= 300
    assert len({r[0] for r in rows}) == len(rows)
    assert {r[1] for r in rows} == {"code", "math", "science", "medicine", "law", "general"}


def test_overlap_with_training_text_is_dropped() -> None:
    examples = [external.ExternalExample("How do I copy a list?", "code", "python-faq"),
                external.ExternalExample("Solve x+1=2", "math", "champ")]
    kept, dropped = external.drop_overlap(examples, ["how do I  copy a list?"])
    assert dropped == 1 and [e.source for e in kept] == ["champ"]
