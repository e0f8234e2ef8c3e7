"""The project-written everyday questions: reproducible, balanced, and free of the checked prompts."""
from __future__ import annotations

from collections import Counter

import pytest

from router_svc.training import data, templates
from router_svc.training.subjects import EXPERTS
from router_svc.training.train import choose_mix


def test_generation_is_seeded_balanced_and_unique() -> None:
    first = templates.generate(40)
    assert first == templates.generate(40)
    assert first != templates.generate(40, seed=1)
    assert Counter(label for _, label in first) == dict.fromkeys(EXPERTS, 40)
    assert len({text.lower() for text, _ in first}) == len(first)


def test_no_text_contains_a_word_of_the_checked_everyday_prompts() -> None:
    # The classifier tests' five everyday prompts must measure generalisation, not recall.
    texts = [text.lower() for text, _ in templates.generate(extra_conditions=("gastritis", "fibroma"))]
    hits = [(phrase, text) for text in texts for phrase in templates.EXCLUDED_PHRASES if phrase in text]
    assert hits == []
    for phrase in ("ibuprofen", "landlord", "tuple", "derivative"):
        assert phrase in templates.EXCLUDED_PHRASES


def test_dictionary_conditions_keep_disease_words_only() -> None:
    # A capitalised name (a brand), a plain word, a bare suffix and a short stem are left out.
    dic = b"6\nappendicitis/S\nAspirin\nfibroadenoma/M\nkidney\nnephropathy\nosis\nacne\n"
    assert templates.dictionary_conditions(dic) == ["appendicitis", "fibroadenoma", "nephropathy"]


def test_parse_templates_labels_the_source_and_uses_the_dictionary() -> None:
    dic = "\n".join(f"zzzmedical{chr(97 + n // 26)}{chr(97 + n % 26)}itis" for n in range(300)).encode()
    examples = data.parse_templates(dic)
    assert {e.subject for e in examples} == {templates.TEMPLATES_SUBJECT}
    assert Counter(e.label for e in examples) == dict.fromkeys(EXPERTS, templates.PER_EXPERT)
    assert any("zzzmedical" in e.text for e in examples if e.label == "medicine")
    assert not any("zzzmedical" in e.text for e in examples if e.label != "medicine")


@pytest.mark.parametrize(("tolerance", "chosen_mix"), [(0.005, 1.0), (0.0, 0.5), (0.1, 4.0)])
def test_mix_choice_keeps_exam_accuracy_then_generalises(tolerance: float, chosen_mix: float) -> None:
    rows = [{"mix": 0.5, "mmlu_accuracy": 0.870, "held_out_mean": 0.60, "accuracy": 0.88, "macro_f1": 0.8},
            {"mix": 1.0, "mmlu_accuracy": 0.866, "held_out_mean": 0.65, "accuracy": 0.88, "macro_f1": 0.8},
            {"mix": 4.0, "mmlu_accuracy": 0.840, "held_out_mean": 0.70, "accuracy": 0.86, "macro_f1": 0.8}]
    assert choose_mix(rows, tolerance)["mix"] == chosen_mix
