"""The reviewed table that maps each MMLU subject to the expert that should answer it.

Every one of MMLU's 57 subjects is listed explicitly: a subject missing from the table is an
error, never a silent default, so a changed data set cannot quietly relabel questions.
The question a row answers is "which model would a user want for this prompt?", not "which
academic faculty owns the subject".
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: The default experts, in the order of the classifier's output columns.
EXPERTS: tuple[str, ...] = ("code", "math", "science", "medicine", "law", "general")

#: The label HumanEval prompts (Python function stubs) train as.
HUMANEVAL_EXPERT = "code"

_TABLE: dict[str, str] = {
    # --- code: programming, algorithms, systems and ML engineering questions.
    "college computer science": "code",
    "high school computer science": "code",
    # Exploits, cryptography and protocols: answered by the model that reads code.
    "computer security": "code",
    # Mostly model/optimisation mechanics (VC dimension, SVMs, backprop), asked by engineers.
    "machine learning": "code",
    # --- math: proofs, calculation and formal reasoning.
    "abstract algebra": "math",
    "college mathematics": "math",
    "elementary mathematics": "math",
    "high school mathematics": "math",
    "high school statistics": "math",
    # Propositional and predicate logic: symbol manipulation, not philosophy essays.
    "formal logic": "math",
    # Regression, autocorrelation, unit roots: statistics applied to economic data.
    "econometrics": "math",
    # --- science: the natural sciences and engineering physics.
    "astronomy": "science",
    "college biology": "science",
    "college chemistry": "science",
    "college physics": "science",
    "conceptual physics": "science",
    # Circuits and fields: physics applied, not software.
    "electrical engineering": "science",
    "high school biology": "science",
    "high school chemistry": "science",
    "high school physics": "science",
    # --- medicine: clinical and health questions where a wrong answer can hurt someone.
    "anatomy": "medicine",
    "clinical knowledge": "medicine",
    "college medicine": "medicine",
    "professional medicine": "medicine",
    "medical genetics": "medicine",
    "nutrition": "medicine",
    "virology": "medicine",
    # Geriatrics: diseases and care of the elderly.
    "human aging": "medicine",
    # --- law: statutes, cases and legal theory.
    "international law": "law",
    "jurisprudence": "law",
    "professional law": "law",
    # --- general: humanities, social sciences, business and everything else.
    "business ethics": "general",
    "global facts": "general",
    "high school european history": "general",
    "high school geography": "general",
    # Civics rather than legal practice: how institutions work, not how to argue a case.
    "high school government and politics": "general",
    "high school macroeconomics": "general",
    "high school microeconomics": "general",
    "high school psychology": "general",
    "high school us history": "general",
    "high school world history": "general",
    # Sexual behaviour and relationships as a social science (the MMLU items are not clinical).
    "human sexuality": "general",
    "logical fallacies": "general",
    "management": "general",
    "marketing": "general",
    "miscellaneous": "general",
    "moral disputes": "general",
    "moral scenarios": "general",
    "philosophy": "general",
    "prehistory": "general",
    "professional accounting": "general",
    # Clinical-sounding but about therapy practice, ethics codes and testing: a generalist's topic.
    "professional psychology": "general",
    "public relations": "general",
    "security studies": "general",
    "sociology": "general",
    "us foreign policy": "general",
    "world religions": "general",
}

#: MMLU subject -> expert (read-only).
SUBJECT_TO_EXPERT: Mapping[str, str] = MappingProxyType(_TABLE)


def expert_for_subject(subject: str) -> str:
    """Returns the expert for an MMLU subject; an unknown subject is a ValueError."""
    try:
        return SUBJECT_TO_EXPERT[subject]
    except KeyError:
        raise ValueError(
            f"MMLU subject {subject!r} is not in the subject->expert table "
            "(router_svc/training/subjects.py); add it there explicitly") from None
