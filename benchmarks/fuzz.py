"""Property-based fuzzing (hypothesis) of everything that parses untrusted input before a model sees it.

Targets:
  featurizer       core.FeaturizerConfig(...).build().transform / transform_batch: arbitrary text
                   (lone surrogates, control characters, strings of up to ~2 M characters), batches,
                   random featurizer parameters, and non-str values;
  expert-request   expert_svc.convert.request_from_pb on GenerateRequests built field by field
                   (NaN/inf floats, full integer ranges, unknown roles, long stop lists, random limits);
  expert-bytes     the expert's tolerant request parser on arbitrary bytes and on mutated valid
                   requests, then request_from_pb on whatever parses;
  router-request   router_svc.servicer.validate_generate_request on the same generated requests.

Only the domain's own validation errors are allowed (InvalidRequestError / InvalidRequest /
ValueError for the featurizer); any other exception, and any accepted value that breaks an
invariant (an id outside the buckets, a NaN temperature let through, ...), is a failure. Failures
are recorded and the run goes on, so one report shows every kind of failure with an example.

    .venv/bin/python benchmarks/fuzz.py --examples 100000        # split evenly over the targets
    .venv/bin/python benchmarks/fuzz.py --examples 2000 --target featurizer

Exit status 1 when anything failed. Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import math
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import core
from expert_router.v1 import expert_router_pb2 as pb
from expert_svc.convert import RequestLimits, request_from_pb
from service_base.errors import InvalidRequestError
from service_base.parsing import UndecodableRequest, tolerant_parser
from service_base.rules import MAX_REQUEST_ID_CHARS, MAX_STOP_CHARS, MAX_STOP_STRINGS, ROLES

MAX_FAILURE_SAMPLES = 10


@dataclass
class TargetResult:
    """What one target saw: examples run, expected rejections by kind, and failures."""

    name: str
    examples: int = 0
    accepted: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    failures: collections.Counter = field(default_factory=collections.Counter)
    samples: list[str] = field(default_factory=list)
    notes: collections.Counter = field(default_factory=collections.Counter)
    note_samples: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None

    def fail(self, kind: str, example: object) -> None:
        self.failures[kind] += 1
        if len(self.samples) < MAX_FAILURE_SAMPLES:
            self.samples.append(f"{kind}: {_short(example)}")

    def note(self, what: str, example: object = None) -> None:
        self.notes[what] += 1
        if example is not None and what not in self.note_samples:
            self.note_samples[what] = _short(example, 200)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _reason(exc: BaseException) -> str:
    """A stable bucket for a rejection message: quoted values and numbers replaced, then cut short."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", str(exc))
    text = re.sub(r"-?\b\d+(\.\d+)?(e[-+]?\d+)?\b|\bnan\b|-?\binf\b", "N", text)
    text = text.split(";")[0]
    return (text[:70] + "…") if len(text) > 70 else text or type(exc).__name__


def _settings(examples: int) -> Callable:
    return settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


# --- strategies -------------------------------------------------------------------------------

# Every code point a Python str can hold. Lone surrogates (category Cs) are rare among all code
# points, so one branch mixes them in on purpose (a list of characters: `text` would merge the
# alphabets back into one uniform range).
ANY_CHAR = st.characters(exclude_categories=())
SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d", "\ude00"])
# What a protobuf string can hold (it must be valid UTF-8, so no surrogates).
PB_CHAR = st.characters(exclude_categories=("Cs",))
any_text = st.one_of(
    st.text(ANY_CHAR, max_size=300),
    st.lists(st.one_of(ANY_CHAR, SURROGATES), max_size=60).map("".join),
)
huge_text = st.builds(
    lambda piece, times: piece * times, st.text(ANY_CHAR, min_size=1, max_size=10), st.integers(1, 200_000)
)
prompt_text = st.one_of(st.text(ANY_CHAR, max_size=40), any_text, huge_text)
pb_text = st.text(PB_CHAR, max_size=80)
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)

featurizer_configs = st.one_of(
    st.just(core.FeaturizerConfig()),
    st.builds(
        core.FeaturizerConfig,
        num_buckets=st.integers(-2, 1 << 22),
        char_ngram_min=st.integers(-1, 8),
        char_ngram_max=st.integers(-1, 8),
        word_bigrams=st.booleans(),
        max_chars=st.integers(-1, 20_000),
    ),
)


def _long_pb_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, st.text(PB_CHAR, min_size=1, max_size=3), st.integers(min_size, max_size))


roles = st.one_of(st.sampled_from(sorted(ROLES)), pb_text)
chat_messages = st.lists(
    st.builds(lambda r, c: pb.ChatMessage(role=r, content=c), roles, st.one_of(pb_text, _long_pb_text(0, 3000))),
    max_size=6,
)
stop_lists = st.lists(st.one_of(pb_text, _long_pb_text(200, 320)), max_size=20)


@st.composite
def sampling_params(draw) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        max_tokens=draw(st.one_of(st.integers(0, 4096), st.integers(0, 2**32 - 1))),
        top_k=draw(st.integers(-(2**31), 2**31 - 1)),
        stop=draw(stop_lists),
    )
    if draw(st.booleans()):
        msg.temperature = draw(st.one_of(floats32, st.floats(0, 2, width=32)))
    if draw(st.booleans()):
        msg.top_p = draw(st.one_of(floats32, st.floats(0, 1, width=32)))
    if draw(st.booleans()):
        msg.seed = draw(st.integers(0, 2**64 - 1))
    return msg


@st.composite
def generate_requests(draw) -> pb.GenerateRequest:
    msg = pb.GenerateRequest(
        request_id=draw(st.one_of(st.just(""), st.just(""), pb_text, _long_pb_text(100, 200))),
        expert=draw(st.one_of(st.just(""), pb_text)),
    )
    shape = draw(st.sampled_from(("prompt", "messages", "both", "neither")))
    if shape in ("prompt", "both"):
        msg.prompt = draw(st.one_of(pb_text, _long_pb_text(1, 5000), st.just(" \n\t")))
    if shape in ("messages", "both"):
        msg.messages.extend(draw(chat_messages))
    if draw(st.booleans()):
        msg.sampling.CopyFrom(draw(sampling_params()))
    return msg


@st.composite
def request_limits(draw) -> RequestLimits:
    context_length = draw(st.integers(16, 8192))
    return RequestLimits(
        context_length=context_length,
        default_max_tokens=draw(st.integers(1, context_length)),
        max_prompt_bytes=draw(st.one_of(st.just(256 * 1024), st.integers(1, 8192))),
    )


@st.composite
def request_bytes(draw) -> bytes:
    """Arbitrary bytes, or a valid request's bytes with none to a few flipped, cut or inserted.

    Half the valid requests go unmutated: with at least one mutation, only 0-5 of 150
    inputs parsed and validated, too few to be sure that a run reaches the accepting side.
    """
    if draw(st.booleans()):
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(generate_requests()).SerializeToString())
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.one_of(st.just(0), st.integers(1, 8)))):
        op = rng.randrange(3)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1 and data:
            del data[rng.randrange(len(data)):]
        else:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
    return bytes(data)


# --- invariants of accepted values ------------------------------------------------------------


def check_features(result: TargetResult, fz, texts: list, ids, weights, segments) -> None:
    if not (len(ids) == len(weights) == len(segments)):
        result.fail("arrays of different lengths", texts)
    elif ids.dtype != np.int64 or weights.dtype != np.float32:
        result.fail(f"wrong dtypes {ids.dtype}/{weights.dtype}", texts)
    elif len(ids) and (ids.min() < 0 or ids.max() >= fz.num_buckets):
        result.fail("feature id outside [0, num_buckets)", texts)
    elif len(weights) and not (np.isfinite(weights).all() and (weights > 0).all()):
        result.fail("weight not finite and positive", texts)
    elif len(segments) and (segments.min() < 0 or segments.max() >= len(texts) or (np.diff(segments) < 0).any()):
        result.fail("segments out of range or unsorted", texts)


def check_engine_request(result: TargetResult, req, limits: RequestLimits, msg: pb.GenerateRequest) -> None:
    s = req.sampling
    size = len((req.prompt or "").encode()) + sum(len(m.content.encode()) for m in req.messages)
    problems = [
        (bool(req.prompt) == bool(req.messages), "exactly one of prompt/messages"),
        (not 1 <= len(req.request_id) <= MAX_REQUEST_ID_CHARS, "request_id length"),
        (any(m.role not in ROLES for m in req.messages), "unknown role accepted"),
        (size > limits.max_prompt_bytes, "prompt over max_prompt_bytes accepted"),
        (not 1 <= s.max_tokens <= limits.context_length, "max_tokens outside [1, context_length]"),
        (s.temperature is not None and not (math.isfinite(s.temperature) and s.temperature >= 0), "bad temperature"),
        (s.top_p is not None and not 0 < s.top_p <= 1, "top_p outside (0, 1]"),
        (s.top_k < 0, "negative top_k accepted"),
        (len(s.stop) > MAX_STOP_STRINGS or any(not x or len(x) > MAX_STOP_CHARS for x in s.stop), "stop strings"),
    ]
    for broken, what in problems:
        if broken:
            result.fail(f"invariant: {what}", msg)
            return


# --- targets ----------------------------------------------------------------------------------


def fuzz_featurizer(examples: int, rng_seed: int) -> TargetResult:
    result = TargetResult("featurizer")
    default = core.FeaturizerConfig().build()
    result.notes["compiled featurizer module"] = int(core.Featurizer.__module__ == "core._featurizer")

    @seed(rng_seed)
    @_settings(examples)
    @given(
        config=st.one_of(st.none(), featurizer_configs),
        batch=st.one_of(
            prompt_text.map(lambda t: [t]),
            st.lists(prompt_text, max_size=6),
            st.lists(st.one_of(any_text, st.binary(max_size=20), st.none(), st.integers()), min_size=1, max_size=3),
        ),
    )
    def body(config, batch):
        result.examples += 1
        if any(isinstance(t, str) and any("\ud800" <= ch <= "\udfff" for ch in t[:2000]) for t in batch):
            result.notes["inputs with lone surrogates"] += 1
        if any(isinstance(t, str) and len(t) > 100_000 for t in batch):
            result.notes["inputs over 100,000 characters"] += 1
        try:
            fz = default if config is None else config.build()
        except ValueError as exc:
            result.rejected[f"config: {_reason(exc)}"] += 1
            return
        except Exception as exc:  # noqa: BLE001 - anything else is what we are looking for
            result.fail(f"build raised {type(exc).__name__}: {exc}", config)
            return
        try:
            ids, weights, segments = fz.transform_batch(batch)
            if len(batch) == 1:
                one_ids, one_weights = fz.transform(batch[0])
                if not (np.array_equal(one_ids, ids) and np.array_equal(one_weights, weights)):
                    result.fail("transform differs from transform_batch", batch)
        except ValueError as exc:
            if all(isinstance(t, str) for t in batch):
                result.fail(f"ValueError on str input: {exc}", batch)
            else:
                result.rejected[f"input: {_reason(exc)}"] += 1
            return
        except Exception as exc:  # noqa: BLE001
            result.fail(f"{type(exc).__name__}: {exc}", batch)
            return
        result.accepted += 1
        check_features(result, fz, batch, ids, weights, segments)

    _timed(result, body)
    return result


def fuzz_expert_request(examples: int, rng_seed: int) -> TargetResult:
    result = TargetResult("expert-request")

    @seed(rng_seed)
    @_settings(examples)
    @given(msg=generate_requests(), limits=request_limits())
    def body(msg, limits):
        result.examples += 1
        try:
            req = request_from_pb(msg, limits)
        except InvalidRequestError as exc:
            result.rejected[_reason(exc)] += 1
            return
        except Exception as exc:  # noqa: BLE001
            result.fail(f"{type(exc).__name__}: {exc}", msg)
            return
        result.accepted += 1
        check_engine_request(result, req, limits, msg)

    _timed(result, body)
    return result


def fuzz_expert_bytes(examples: int, rng_seed: int) -> TargetResult:
    result = TargetResult("expert-bytes")
    parse = tolerant_parser(pb.GenerateRequest)
    limits = RequestLimits()

    @seed(rng_seed)
    @_settings(examples)
    @given(data=request_bytes())
    def body(data):
        result.examples += 1
        try:
            msg = parse(data)
        except Exception as exc:  # noqa: BLE001 - the parser must never raise
            result.fail(f"parser raised {type(exc).__name__}: {exc}", data)
            return
        if isinstance(msg, UndecodableRequest):
            result.rejected[f"undecodable: {msg.reason}"] += 1
            return
        try:
            req = request_from_pb(msg, limits)
        except InvalidRequestError as exc:
            result.rejected[_reason(exc)] += 1
            return
        except Exception as exc:  # noqa: BLE001
            result.fail(f"{type(exc).__name__}: {exc}", data)
            return
        result.accepted += 1
        check_engine_request(result, req, limits, msg)

    _timed(result, body)
    return result


def _router_validator():
    """The router's validate_generate_request, called as (request, max_prompt_bytes) whatever its
    exact signature; returns (call, InvalidRequest class) or raises ImportError with the reason."""
    try:
        from router_svc.errors import InvalidRequest
        from router_svc.servicer import validate_generate_request
    except Exception as exc:
        raise ImportError(f"router_svc.servicer.validate_generate_request: {type(exc).__name__}: {exc}") from exc
    params = inspect.signature(validate_generate_request).parameters
    if "max_prompt_bytes" in params:
        return (lambda msg, limit: validate_generate_request(msg, max_prompt_bytes=limit)), InvalidRequest
    if len(params) >= 2:
        return (lambda msg, limit: validate_generate_request(msg, limit)), InvalidRequest
    return (lambda msg, limit: validate_generate_request(msg)), InvalidRequest


def fuzz_router_request(examples: int, rng_seed: int) -> TargetResult:
    result = TargetResult("router-request")
    try:
        validate, invalid_request = _router_validator()
    except ImportError as exc:
        result.skipped = str(exc)
        return result

    @seed(rng_seed)
    @_settings(examples)
    @given(msg=generate_requests(), limit=st.one_of(st.just(256 * 1024), st.integers(1, 8192)))
    def body(msg, limit):
        result.examples += 1
        try:
            validate(msg, limit)
        except invalid_request as exc:
            result.rejected[_reason(exc)] += 1
            router_ok = False
        except Exception as exc:  # noqa: BLE001
            result.fail(f"{type(exc).__name__}: {exc}", msg)
            return
        else:
            result.accepted += 1
            router_ok = True
            s = msg.sampling
            if s.HasField("temperature") and not (math.isfinite(s.temperature) and s.temperature >= 0):
                result.fail("invariant: bad temperature accepted", msg)
            if s.HasField("top_p") and not 0 < s.top_p <= 1:
                result.fail("invariant: top_p outside (0, 1] accepted", msg)
            if bool(msg.prompt) and bool(msg.messages):
                result.fail("invariant: prompt and messages both accepted", msg)
        # Not failures: where the router's and the expert's checks disagree (the expert has more
        # bounds: context length, stop-string length, request_id length).
        try:
            request_from_pb(msg, RequestLimits(max_prompt_bytes=limit))
            expert_ok = True
        except InvalidRequestError:
            expert_ok = False
        if router_ok != expert_ok:
            verdict = f"router {'accepts' if router_ok else 'rejects'}, expert {'accepts' if expert_ok else 'rejects'}"
            result.note(verdict, msg)

    _timed(result, body)
    return result


def _timed(result: TargetResult, body: Callable[[], None]) -> None:
    started = time.perf_counter()
    try:
        body()
    except Exception as exc:  # noqa: BLE001 - a hypothesis-level error (e.g. a strategy bug)
        result.fail(f"hypothesis stopped: {type(exc).__name__}: {exc}", "")
    result.seconds = time.perf_counter() - started


TARGETS: dict[str, Callable[[int, int], TargetResult]] = {
    "featurizer": fuzz_featurizer,
    "expert-request": fuzz_expert_request,
    "expert-bytes": fuzz_expert_bytes,
    "router-request": fuzz_router_request,
}


def run(examples: int, rng_seed: int = 0, targets: list[str] | None = None) -> list[TargetResult]:
    """Fuzz `targets` (default all), splitting `examples` evenly among them."""
    names = targets or list(TARGETS)
    per_target = max(1, math.ceil(examples / len(names)))
    return [TARGETS[name](per_target, rng_seed) for name in names]


def report(results: list[TargetResult]) -> str:
    lines = [
        f"fuzz: python {platform.python_version()}, hypothesis {_hypothesis_version()}, {os.cpu_count()} cores",
        "",
        f"{'target':<16}{'examples':>10}{'accepted':>10}{'rejected':>10}{'failures':>10}{'seconds':>9}",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"{r.name:<16} skipped: {r.skipped}")
            continue
        lines.append(
            f"{r.name:<16}{r.examples:>10,}{r.accepted:>10,}{sum(r.rejected.values()):>10,}"
            f"{r.failed:>10,}{r.seconds:>9.1f}"
        )
    total = sum(r.examples for r in results)
    lines.append(
        f"{'total':<16}{total:>10,}{sum(r.accepted for r in results):>10,}"
        f"{sum(sum(r.rejected.values()) for r in results):>10,}{sum(r.failed for r in results):>10,}"
        f"{sum(r.seconds for r in results):>9.1f}"
    )
    for r in results:
        if r.skipped:
            continue
        lines.append(f"\n[{r.name}] top rejections:")
        for reason, count in r.rejected.most_common(8):
            lines.append(f"  {count:>8,}  {reason}")
        for note, count in sorted(r.notes.items()):
            lines.append(f"  note: {note}: {count:,}")
            if note in r.note_samples:
                lines.append(f"    e.g. {r.note_samples[note]}")
        for kind, count in r.failures.most_common():
            lines.append(f"  FAILURE x{count:,}: {kind}")
        for sample in r.samples:
            lines.append(f"    e.g. {sample}")
    return "\n".join(lines)


def _hypothesis_version() -> str:
    import hypothesis

    return hypothesis.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000, help="generated inputs in total (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="only these targets (repeatable)")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error("--examples must be >= 1")
    results = run(args.examples, args.seed, args.target)
    print(report(results))
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
