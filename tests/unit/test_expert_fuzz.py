"""A small run of benchmarks/fuzz.py (the full one, 100,000+ inputs, is a script: docs/reliability.md)."""

from __future__ import annotations

import pytest

from benchmarks import fuzz

EXAMPLES = 150


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_fuzz_target_finds_no_failures(target):
    result = fuzz.TARGETS[target](EXAMPLES, 1234)
    if result.skipped:
        pytest.skip(result.skipped)
    assert not result.failed, fuzz.report([result])
    assert result.examples == EXAMPLES
    # The strategies reach both sides of the validation, or the run proves nothing.
    assert result.accepted > 0 and sum(result.rejected.values()) > 0, fuzz.report([result])


def test_fuzz_reports_an_injected_failure(monkeypatch):
    def broken(msg, limits):
        raise KeyError("bug")

    monkeypatch.setattr(fuzz, "request_from_pb", broken)
    result = fuzz.fuzz_expert_request(20, 1)
    assert result.failed == 20 and result.failures["KeyError: 'bug'"] == 20
    assert "FAILURE x20: KeyError: 'bug'" in fuzz.report([result])


def test_script_exit_status(capsys):
    assert fuzz.main(["--examples", "8", "--target", "featurizer"]) == 0
    assert "featurizer" in capsys.readouterr().out
