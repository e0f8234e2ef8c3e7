"""The contract's comments and the README name what the code sends: every response metadata key of
the router's Generate and every status its errors carry, with the retry hint's key."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from router_svc import errors
from router_svc.servicer import Route
from service_base.rules import REQUEST_ID_KEY

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "protos" / "expert_router" / "v1" / "expert_router.proto"


def router_comment() -> str:
    """The comment block right above ``service Router``."""
    lines = PROTO.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("service Router"))
    start = end
    while start > 0 and lines[start - 1].startswith("//"):
        start -= 1
    return "\n".join(lines[start:end])


def metadata_keys() -> set[str]:
    """Every key the router's Generate can put in its initial metadata."""
    routes = [
        Route("math", 0.9, False, "v1"),
        Route("general", None, False, "v1"),
        Route("general", 0.2, True, "v1"),
        Route("law", 0.5, False, "v1", failover_from="math"),
        Route("medicine", 0.6, False, "v1", cascade="minilm-lr-1"),
    ]
    keys = {key for route in routes for key, _ in route.metadata()}
    return keys | {REQUEST_ID_KEY}


def test_the_metadata_keys_cover_every_route_kind() -> None:
    assert metadata_keys() == {"x-expert", "x-expert-score", "x-classifier-version", "x-expert-source",
                               "x-expert-failover-from", "x-expert-cascade", "x-request-id"}


@pytest.mark.parametrize("key", sorted(metadata_keys()))
def test_every_metadata_key_is_documented(key: str) -> None:
    assert re.search(rf"(?m)^//\s+{re.escape(key)}\s", router_comment()), f"{key} missing from the proto"
    assert f"`{key}`" in (ROOT / "README.md").read_text(), f"{key} missing from README.md"


def test_every_router_status_and_the_retry_hint_are_documented() -> None:
    comment = router_comment()
    codes = {cls.code.name for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.ServiceError) and cls is not errors.ServiceError}
    codes.discard("INTERNAL")  # the base's default; listed below on its own
    assert {"INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", "RESOURCE_EXHAUSTED"} <= codes
    for name in (*sorted(codes), "INTERNAL", "UNAUTHENTICATED", "PERMISSION_DENIED"):
        assert name in comment, f"{name} missing from the proto's Router comment"
    assert errors.RETRY_AFTER_KEY in comment


WORK_ITEM = re.compile(r"\b(issue|round) #?\d+\b", re.IGNORECASE)
SCANNED = ("*.md", "*.py", "*.proto", "*.pyx", "*.yaml", "*.toml", "Makefile")


@pytest.mark.slow
def test_no_text_points_at_work_items_a_reader_cannot_look_up() -> None:
    found = []
    for pattern in SCANNED:
        for path in ROOT.rglob(pattern):
            relative = path.relative_to(ROOT)
            if relative.parts[0].startswith(".") or relative.parts[0] in {"build", "expert_router"}:
                continue
            if path == Path(__file__).resolve():
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if WORK_ITEM.search(line):
                    found.append(f"{relative}:{number}: {line.strip()}")
    assert found == []


def test_the_settings_fixed_at_start_are_the_ones_documented() -> None:
    """The tables' "on reload" column, read as a reader reads it, names what server.py keeps at a reload."""
    from router_svc.config import SETTINGS
    from router_svc.server import FIXED_AT_START

    by_cell = {f"`{s.key}`": s.name for s in SETTINGS if s.key} | {
        f"`{s.flag}`".split(" ")[0]: s.name for s in SETTINGS if s.flag}
    restart = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) >= 5 and cells[3] == "restart":
            name = by_cell.get(cells[0].split(" ")[0].rstrip("`") + "`")
            if name is not None:
                restart.add(name)
    assert restart == set(FIXED_AT_START)
