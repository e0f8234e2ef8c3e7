"""WordNet domain definitions: the parser follows wndb(5), domains come down hyponym links, the table decides."""
from __future__ import annotations

from collections import Counter

import pytest

from router_svc.training import data, wordnet

# A miniature data.noun in WordNet's format (offsets are arbitrary but consistent):
# 00000001 "pathology" (a domain), 00000002 "tumor" tagged ;c pathology, 00000003 "osteoma"
# a hyponym of tumor (inherits pathology), 00000004 "law", 00000005 "damages" tagged law,
# 00000006 "mixed" tagged both law and pathology (two experts: dropped), 00000007 "chess" (a domain
# not in the table), 00000008 "gambit" tagged chess (left out), 00000009 "tide" untagged.
_NOUNS = b"""  1 This software and database is being provided to you, the LICENSEE, by
00000001 26 n 01 pathology 0 001 -c 00000002 n 0000 | the branch of medicine that studies disease
00000002 26 n 02 tumor 0 tumour 0 002 ;c 00000001 n 0000 ~ 00000003 n 0000 | an abnormal new mass of tissue; "a tumor grew"
00000003 26 n 01 osteoma 0 001 @ 00000002 n 0000 | a slow growing benign tumor of bone tissue
00000004 26 n 01 law 0 000 | the collection of rules imposed by authority
00000005 26 n 02 damages 0 amends 0 001 ;c 00000004 n 0000 | a sum of money paid in compensation for loss
00000006 26 n 01 mixed 0 002 ;c 00000004 n 0000 ;c 00000001 n 0000 | something of two domains
00000007 26 n 01 chess 0 000 | a board game for two players
00000008 26 n 01 gambit 0 001 ;c 00000007 n 0000 | an opening in chess
00000009 26 n 01 tide 0 000 | the periodic rise and fall of the sea
"""
_VERBS = b"""00000010 41 v 01 excise 0 001 ;c 00000001 n 0000 01 + 02 00 | remove by cutting; "the surgeon excised the tumor"
"""


def test_domains_come_from_pointers_and_hyponyms_and_the_table_decides() -> None:
    pairs = wordnet.parse_wordnet({"n": _NOUNS, "v": _VERBS})
    assert sorted(pairs) == [
        ("damages, amends: a sum of money paid in compensation for loss", "law"),
        ("excise: remove by cutting", "medicine"),
        ("osteoma: a slow growing benign tumor of bone tissue", "medicine"),
        ("tumor, tumour: an abnormal new mass of tissue", "medicine"),
    ]


def test_sampling_caps_each_expert_and_is_seeded() -> None:
    capped = wordnet.parse_wordnet({"n": _NOUNS, "v": _VERBS}, per_expert=2)
    assert Counter(label for _, label in capped) == {"medicine": 2, "law": 1}
    assert capped == wordnet.parse_wordnet({"n": _NOUNS, "v": _VERBS}, per_expert=2)


def test_a_malformed_line_names_the_file_and_line() -> None:
    with pytest.raises(ValueError, match=r"data\.n line 2"):
        wordnet.parse_wordnet({"n": b"  header\n00000001 26 n zz pathology 0 000 | broken\n"})


def test_table_maps_only_to_experts_and_the_source_is_a_pinned_training_source() -> None:
    assert set(wordnet.DOMAIN_EXPERTS.values()) == {"code", "math", "science", "medicine", "law", "general"}
    assert data.EXTRA_SOURCES[wordnet.WORDNET_SUBJECT] == wordnet.WORDNET_FILES
    assert {wordnet.pos_of(f) for f in wordnet.WORDNET_FILES} == {"n", "v", "a", "r"}
    assert all(len(f.sha256) == 64 and f.package == "wordnet-base" for f in wordnet.WORDNET_FILES)
    examples = data.parse_wordnet({"n": _NOUNS})
    assert {e.subject for e in examples} == {wordnet.WORDNET_SUBJECT}
