"""Dictionary definitions labelled by WordNet's own topic domains: medicine, law and science words.

The exam questions teach the classifier the vocabulary of each subject only as far as 14,000
questions reach; a user who asks about "parametritis" or "treble damages" uses words no exam
item contains. WordNet 3.0 (Debian ``wordnet-base``, WordNet 3.0 licence: use, copy, modify and
distribute with the copyright notice) tags synsets with a *topic domain* (pointer ``;c`` in
``data.noun`` / ``data.verb`` / ``data.adj`` / ``data.adv``): "osteoma" is in the domain
*pathology*, "non pros" in *law*, "Turing machine" in *computer science*. A synset's hyponyms
belong to its domain too (a kind of tumour is pathology), so the domain is carried down the
hyponym links. The labels are WordNet's; this project only maps each domain to an expert in the
reviewed table ``DOMAIN_EXPERTS`` (domains not listed are left out, and a synset whose domains map
to two experts is dropped), the way ``subjects.py`` maps MMLU subjects.

Each example is the synset's words and its definition, as WordNet writes them ("osteoma: a slow
growing benign tumor consisting of bone tissue"); WordNet's usage examples (the quoted parts of
the gloss) are left out. Seeded sampling caps each expert, so that botany's 4,700 plant names do
not outweigh everything else and training stays within its time budget.

Measured on the validation split, these definitions lowered MMLU accuracy (docs/classifier.md:
dictionary definitions are not how people ask), so `make train-router` leaves the source out;
``TrainSettings(extra_sources=(..., "wordnet"))`` puts it back.
"""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from router_svc.training.sources import DebianFile

WORDNET_SUBJECT = "wordnet"
WORDNET_SEED = 20261203
#: Definitions kept per expert (fewer where WordNet has fewer).
PER_EXPERT = 600
#: pos letter of the data file -> (the file inside wordnet-base, its sha256)
_FILES = {
    "n": ("data.noun", "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2"),
    "v": ("data.verb", "adcf43e35b581e8036d8b5a52d63d9cd3d3b4870b2720d3c03c799df44777bc2"),
    "a": ("data.adj", "c89120dfc1f046ddff4a631bf9b7e9fa1a36b5e86565a23bf82dbe14f30b88a7"),
    "r": ("data.adv", "444a63bf3955080ab7524f5079cfc07ff9bc682cb98bdb1db73b0fb9829f1139"),
}
WORDNET_FILES: tuple[DebianFile, ...] = tuple(
    DebianFile(package="wordnet-base", member=f"usr/share/wordnet/{name}", sha256=digest, licence="WordNet-3.0")
    for name, digest in _FILES.values())

#: WordNet topic domain (the domain synset's first word) -> expert. Same question as subjects.py:
#: which model would a user want for a prompt about this? Unlisted domains are not used.
_TABLE: dict[str, str] = {
    # code
    "computer_science": "code", "computer": "code", "programming": "code",
    # math (MMLU puts statistics and formal logic with math too)
    "mathematics": "math", "statistics": "math", "geometry": "math", "arithmetic": "math",
    "algebra": "math", "trigonometry": "math", "calculus": "math", "topology": "math",
    # science: natural sciences and engineering physics (MMLU: electrical engineering is science)
    "physics": "science", "chemistry": "science", "biology": "science", "botany": "science",
    "zoology": "science", "genetics": "science", "geology": "science", "astronomy": "science",
    "meteorology": "science", "biochemistry": "science", "optics": "science", "cosmology": "science",
    "ecology": "science", "microbiology": "science", "electronics": "science", "electricity": "science",
    "mechanics": "science", "thermodynamics": "science", "nuclear_physics": "science",
    "crystallography": "science", "mineralogy": "science", "paleontology": "science",
    "entomology": "science", "ornithology": "science", "oceanography": "science",
    "atomic_physics": "science", "astrophysics": "science", "embryology": "science",
    # medicine (MMLU: anatomy, virology and nutrition are medicine)
    "medicine": "medicine", "anatomy": "medicine", "surgery": "medicine", "psychiatry": "medicine",
    "pathology": "medicine", "physiology": "medicine", "virology": "medicine", "dentistry": "medicine",
    "obstetrics": "medicine", "pharmacology": "medicine", "immunology": "medicine",
    "neurology": "medicine", "ophthalmology": "medicine", "pediatrics": "medicine",
    "gynecology": "medicine", "cardiology": "medicine", "oncology": "medicine",
    "dermatology": "medicine", "radiology": "medicine", "urology": "medicine",
    "orthopedics": "medicine", "endocrinology": "medicine", "hematology": "medicine",
    "pharmacy": "medicine", "epidemiology": "medicine", "nutrition": "medicine",
    "medical_science": "medicine", "bacteriology": "medicine",
    # law
    "law": "law", "criminal_law": "law", "civil_law": "law", "international_law": "law",
    "jurisprudence": "law", "contract_law": "law", "common_law": "law",
    # general: humanities, arts, sport, business, everyday life (MMLU: psychology, economics,
    # philosophy, history and politics are general)
    "military": "general", "music": "general", "sport": "general", "art": "general",
    "history": "general", "religion": "general", "cooking": "general", "architecture": "general",
    "photography": "general", "commerce": "general", "commercial_enterprise": "general",
    "politics": "general", "government": "general", "economics": "general", "literature": "general",
    "poetry": "general", "philosophy": "general", "psychology": "general", "linguistics": "general",
    "grammar": "general", "rhetoric": "general", "baseball": "general", "golf": "general",
    "football": "general", "basketball": "general", "tennis": "general", "soccer": "general",
    "farming": "general", "fashion": "general", "theater": "general", "dancing": "general",
    "finance": "general", "banking": "general", "advertising": "general", "journalism": "general",
}
DOMAIN_EXPERTS: Mapping[str, str] = MappingProxyType(_TABLE)


def pos_of(source: DebianFile) -> str:
    """The part-of-speech letter of one of ``WORDNET_FILES``."""
    name = source.member.rsplit("/", 1)[-1]
    return next(pos for pos, (file_name, _) in _FILES.items() if file_name == name)


def _parse_file(data: bytes, pos: str, synsets: dict) -> None:
    """Adds pos+offset -> (words, definition, [(pointer symbol, target key)]) for each data line.

    Line format (WordNet's wndb(5)): ``offset lex_filenum ss_type w_cnt word lex_id ... p_cnt
    pointer... [frames] | gloss``, w_cnt in hexadecimal; each pointer is ``symbol offset pos
    source/target``. Lines starting with two spaces are the licence header.
    """
    for number, line in enumerate(data.decode("latin-1").splitlines(), start=1):
        if not line or line.startswith("  "):
            continue
        head, _, gloss = line.partition(" | ")
        parts = head.split()
        try:
            word_count = int(parts[3], 16)
            words = [parts[4 + 2 * i].replace("_", " ") for i in range(word_count)]
            i = 4 + 2 * word_count
            pointers = []
            for _ in range(int(parts[i])):
                symbol, offset, target_pos = parts[i + 1], parts[i + 2], parts[i + 3]
                pointers.append((symbol, _key(target_pos, offset)))
                i += 4
        except (IndexError, ValueError) as exc:
            raise ValueError(f"WordNet data.{pos} line {number}: {exc!r}") from None
        # The definition is the gloss up to the first quoted usage example.
        definition = gloss.split('"')[0].strip().rstrip(";").strip()
        synsets[_key(pos, parts[0])] = (words, definition, pointers)


def _key(pos: str, offset: str) -> str:
    # Adjective satellites ("s") live in data.adj with the head adjectives.
    return ("a" if pos == "s" else pos) + offset


def domain_experts(synsets: dict) -> dict[str, str]:
    """synset key -> expert, from the topic-domain pointers carried down hyponym links."""
    domains: dict[str, set[str]] = {}
    for key, (_, _, pointers) in synsets.items():
        for symbol, target in pointers:
            if symbol == ";c" and target in synsets:
                domains.setdefault(key, set()).add(synsets[target][0][0].replace(" ", "_"))
    inherited = {key: set(found) for key, found in domains.items()}
    queue = deque(domains)
    while queue:
        key = queue.popleft()
        for symbol, target in synsets[key][2]:
            # ~ hyponym, ~i instance; a synset with its own domain keeps it
            if symbol in ("~", "~i") and target in synsets and target not in domains:
                before = len(inherited.get(target, ()))
                inherited.setdefault(target, set()).update(inherited[key])
                if len(inherited[target]) > before:
                    queue.append(target)
    labels = {}
    for key, found in inherited.items():
        experts = {DOMAIN_EXPERTS[d] for d in found if d in DOMAIN_EXPERTS}
        if len(experts) == 1:
            labels[key] = experts.pop()
    return labels


def parse_wordnet(files: Mapping[str, bytes], *, per_expert: int = PER_EXPERT,
                  seed: int = WORDNET_SEED) -> list[tuple[str, str]]:
    """(text, expert) pairs: "word, synonym: definition" for a seeded sample of domain synsets.

    ``files`` maps a pos letter (n, v, a, r) to that data file's bytes.
    """
    synsets: dict = {}
    for pos in sorted(files):
        _parse_file(files[pos], pos, synsets)
    by_expert: dict[str, list[str]] = {}
    seen: set[str] = set()
    for key, expert in sorted(domain_experts(synsets).items()):
        words, definition, _ = synsets[key]
        if not definition:
            continue
        text = f"{', '.join(words[:3])}: {definition}"
        if text.lower() not in seen:
            seen.add(text.lower())
            by_expert.setdefault(expert, []).append(text)
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for expert in sorted(by_expert):
        texts: Sequence[str] = by_expert[expert]
        chosen = sorted(rng.sample(range(len(texts)), min(per_expert, len(texts))))
        out += [(texts[i], expert) for i in chosen]
    return out
