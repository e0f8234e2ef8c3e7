"""Code and law requests: snippets and clauses cut as documented, seeded, free of the checked prompts."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from router_svc.training import data, templates, user_requests

_C_FILE = """/* Copyright (C) Someone. This software is licensed under the MIT licence. */

#include <stdio.h>
#include <stdlib.h>

/* Shows how to read a file.
 * Second comment line.
 * Third comment line.
 */

static long file_size(FILE *f)
{
  long size;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  rewind(f);
  return size;
}

int main(void)
{
  return 0;
}
"""

_LICENCE = """Some Licence

1. Definitions.

"Work" means the work of authorship, whether in Source or Object form, made available under this
Licence, as indicated by a copyright notice that is included in or attached to the work, and any
adaptations of it that the licensor chooses to include.

Short line.
"""


def test_snippets_skip_notices_and_comment_blocks_and_keep_code() -> None:
    snippets = user_requests.code_snippets(_C_FILE)
    assert all(not re.search("copyright|licen", s, re.IGNORECASE) for s in snippets)
    assert all("Third comment line" not in s for s in snippets)
    assert any("ftell(f);" in s for s in snippets)
    assert all(4 <= len(s.splitlines()) <= 16 + 1 for s in snippets)  # + the blank line joining two blocks


def test_licence_paragraphs_keep_clause_sized_paragraphs() -> None:
    paragraphs = user_requests.licence_paragraphs(_LICENCE)
    assert len(paragraphs) == 1 and paragraphs[0].startswith('"Work" means') and "\n" not in paragraphs[0]


@pytest.mark.parametrize(("member", "language"), [
    ("usr/share/doc/libcurl4/examples/ftpget.c", "C"), ("usr/include/fmt/os.h", "C++"),
    ("usr/share/nodejs/lru-cache/index.d.ts", "TypeScript"), ("usr/share/nodejs/lru-cache/index.js", "JavaScript"),
    ("usr/share/bash-completion/bash_completion", "bash")])
def test_language_of_member(member: str, language: str) -> None:
    assert user_requests.language_of(member) == language


def test_language_of_an_unknown_file_is_an_error() -> None:
    with pytest.raises(ValueError, match="no language known"):
        user_requests.language_of("README.md")


def _snippets() -> dict[str, list[str]]:
    # One snippet carries an excluded phrase: every text quoting it must be skipped.
    return {"C": user_requests.code_snippets(_C_FILE),
            "Rust": ["fn pair() -> (u8, u8) {\n    // a tuple of two\n    (1, 2)\n}"]}


def test_code_requests_are_seeded_and_labelled() -> None:
    first = user_requests.generate_code(_snippets(), 400)
    assert first == user_requests.generate_code(_snippets(), 400)
    assert first != user_requests.generate_code(_snippets(), 400, seed=1)
    counts = Counter(label for _, label in first)
    assert counts == {"code": 340, "general": 60}
    assert len({text.lower() for text, _ in first}) == len(first)
    # About CODE_SNIPPET_SHARE of the code requests quote a snippet, real (C) or project-written.
    quoting = [text for text, label in first if label == "code" and "\n" in text]
    assert len(quoting) >= 0.4 * counts["code"]
    assert any("ftell(f);" in text for text in quoting)


def test_law_requests_quote_licence_clauses_and_are_seeded() -> None:
    first = user_requests.generate_law([_LICENCE], 300)
    assert first == user_requests.generate_law([_LICENCE], 300)
    assert Counter(label for _, label in first) == {"law": 255, "general": 45}
    assert any('"Work" means' in text for text, label in first if label == "law")
    assert not any('"Work" means' in text for text, label in first if label == "general")


def test_no_request_contains_a_phrase_of_the_checked_everyday_prompts() -> None:
    texts = [t.lower() for t, _ in user_requests.generate_code(_snippets())]
    texts += [t.lower() for t, _ in user_requests.generate_law([_LICENCE, "a tenant's deposit clause " * 10])]
    assert [(p, t) for t in texts for p in templates.EXCLUDED_PHRASES if p in t] == []


def test_sources_are_pinned_and_named_uniquely() -> None:
    for name in (user_requests.USER_CODE_SUBJECT, user_requests.USER_LAW_SUBJECT):
        files = data.EXTRA_SOURCES[name]
        assert files and all(re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.licence for f in files)
        # digests are recorded by file name, so names must not collide
        assert len({Path(f.member).name for f in files}) == len(files)
    for source in data.CODE_SNIPPET_FILES:
        user_requests.language_of(source.member)


def test_parsers_label_their_subjects() -> None:
    code = data.parse_user_code({"x/a.c": _C_FILE.encode(), "x/b.rs": b"fn main() {\n    let a = 1;\n"
                                 b"    let b = 2;\n    println!(\"{}\", a + b);\n}\n"})
    law = data.parse_user_law({"x/Apache": _LICENCE.encode()})
    assert {e.subject for e in code} == {user_requests.USER_CODE_SUBJECT}
    assert {e.subject for e in law} == {user_requests.USER_LAW_SUBJECT}
    assert {e.label for e in code} == {"code", "general"} and {e.label for e in law} == {"law", "general"}


def test_new_sources_leave_the_existing_split_as_it_was() -> None:
    # Their names sort after "templates", so adding them changes no other source's train/test part.
    old = [data.Example(f"q{i}", "law", "professional_law") for i in range(30)]
    old += [data.Example(f"t{i}", "code", templates.TEMPLATES_SUBJECT) for i in range(30)]
    new = [data.Example(f"u{i}", "code", user_requests.USER_CODE_SUBJECT) for i in range(30)]
    new += [data.Example(f"l{i}", "law", user_requests.USER_LAW_SUBJECT) for i in range(30)]
    _, test_before = data.stratified_split(old)
    _, test_after = data.stratified_split(old + new)
    assert test_before == [e for e in test_after if e.subject not in user_requests.SUBJECTS]


def _train_args(*argv: str):
    import argparse

    from router_svc.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return train_command.settings_from_args(parser.parse_args(list(argv)))


def test_train_command_defaults_train_on_and_hold_out_the_request_sources() -> None:
    settings = _train_args()
    for name in user_requests.SUBJECTS:
        assert name in settings.extra_sources and name in settings.held_out_sources


def test_train_command_source_overrides_are_checked() -> None:
    settings = _train_args("--extra-sources", "chitchat, user_law", "--held-out-sources", "user_law")
    assert settings.extra_sources == ("chitchat", "user_law") and settings.held_out_sources == ("user_law",)
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['nope'\]; known: "):
        _train_args("--extra-sources", "chitchat,nope")
    with pytest.raises(ValueError, match=r"--held-out-sources: \['perlfaq'\] not among the training sources"):
        _train_args("--extra-sources", "chitchat", "--held-out-sources", "perlfaq")


def test_pinned_debian_digest_refuses_a_different_file(tmp_path: Path) -> None:
    # The request sources are all Debian files: build a tiny package with dpkg-deb and read it back.
    import hashlib
    import shutil
    import subprocess
    from dataclasses import replace

    from router_svc.training.sources import DebianFile, fetch_debian_file

    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb (Debian) is needed to build the test package")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: demo-src\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: Nobody <nobody@example.org>\nDescription: demo\n")
    source_file = root / "usr" / "share" / "demo" / "main.go"
    source_file.parent.mkdir(parents=True)
    source_file.write_bytes(b"package main\n\nfunc main() {}\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(cache / "demo-src_1.0_all.deb")],
                   check=True, capture_output=True)
    right = hashlib.sha256(source_file.read_bytes()).hexdigest()
    source = DebianFile(package="demo-src", member="usr/share/demo/main.go", sha256=right, licence="MIT")
    assert fetch_debian_file(source, cache) == source_file.read_bytes()
    with pytest.raises(ValueError, match="has sha256"):
        fetch_debian_file(replace(source, sha256="0" * 64), cache)
    with pytest.raises(ValueError, match="has no usr/share/demo/other.go"):
        fetch_debian_file(replace(source, member="usr/share/demo/other.go"), cache)
