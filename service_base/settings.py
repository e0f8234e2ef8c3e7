"""One declaration per setting, and everything both services derive from it.

A ``Setting`` states a setting's flag, YAML key, type, bounds, default, help and whether a reload
can change it. From a service's tuple of them come its argparse flags (``add_flags``), the typing of
YAML values (``typed_from_file``), the type and bounds checks run when its frozen config is built
(``check``) and the tables of docs/configuration.md (``flag_table``, ``file_table``; a test
compares them with the document, and ``make config-docs`` rewrites them).

Why not pydantic: the checks are types and bounds on flat scalars, which this small table states
as data; pydantic would add a runtime dependency to both services and its own wording of errors,
which we would have to translate back into the messages operators and tests already rely on (each
names the key and what would be accepted). Cross-field rules (a fallback among the experts, a key
and its certificate together) stay as a few lines of code in each config class.

Nothing here touches the file system: paths are checked for their type only; reading them is the
job of the code that starts a server.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Setting", "accepts", "add_flags", "between_markers", "check", "expected", "file_table", "flag_table",
           "replace_between_markers", "restart_only", "typed_from_file"]

# Kinds of value: how a flag parses, how a YAML value is typed and how the value is checked.
INT, FLOAT, BOOL, STR, PATH, FOLDER = "int", "float", "bool", "str", "path", "folder"
_FLAG_TYPES: dict[str, Callable[[str], Any]] = {INT: int, FLOAT: float}


@dataclass(frozen=True)
class Setting:
    """One setting of a service.

    ``name`` is the config dataclass field (and the argparse ``dest``); ``flag``/``key`` are None
    where the setting has no flag or no YAML key. ``low``/``high`` bound numbers (``low_open``: the
    bound itself is excluded); ``choices`` lists the allowed strings. ``nullable``: None means "not
    set" and skips the checks. ``restart``: a reload keeps the running value (logged), only a
    restart applies a change. ``default_doc`` is how the default reads in the docs and the help
    when the literal value would not say it ("the number of cores"). ``negate`` makes a boolean
    flag that turns the setting off (``--no-reflection``); a boolean flag otherwise turns it on.
    ``doc`` is the docs' meaning column when it says more than the help.
    """

    name: str
    help: str
    kind: str = STR
    default: Any = None
    flag: str | None = None
    key: str | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    restart: bool = False
    metavar: str | None = None
    default_doc: str | None = None
    negate: bool = False
    group: str | None = None
    required: bool = False
    doc: str | None = None
    flag_type: Callable[[str], Any] | None = None
    # A check of its own (an address, a name); raises the service's error with the full message.
    validate: Callable[[str, Any], None] | None = None

    @property
    def shown_default(self) -> str:
        """The default as the help and the docs show it."""
        if self.default_doc is not None:
            return self.default_doc
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


def expected(setting: Setting, value: Any) -> str | None:
    """What ``value`` should have been ("an integer >= 1"), or None when it is valid."""
    if value is None and setting.nullable:
        return None
    if setting.choices is not None:
        return None if value in setting.choices else f"one of {', '.join(setting.choices)}"
    if setting.kind == BOOL:
        return None if isinstance(value, bool) else "true or false"
    if setting.kind in (STR, PATH, FOLDER):
        if isinstance(value, str) and value:
            return None
        return {STR: "a non-empty string", PATH: "a file path", FOLDER: "a folder path"}[setting.kind]
    if setting.kind == INT:
        wrong_type = isinstance(value, bool) or not isinstance(value, int)
        return _bounds_phrase(setting, "an integer", value, wrong_type)
    wrong_type = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    return _bounds_phrase(setting, "a number", value, wrong_type)


def _num(bound: float) -> str:
    """A bound as people write it: 3600, 0.05, 1048576 (not 1.04858e+06)."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _bounds_phrase(setting: Setting, noun: str, value: Any, wrong_type: bool) -> str | None:
    low, high = setting.low, setting.high
    sign = ">" if setting.low_open else ">="
    if low is None:
        return noun if wrong_type else None
    if high is None:
        if not wrong_type and (value > low if setting.low_open else value >= low):
            return None
        if setting.kind == INT:
            return f"{noun} {sign} {_num(low)}"
        return "a finite number" if wrong_type else f"{sign} {_num(low)}"
    ok = not wrong_type and (low < value if setting.low_open else low <= value) and value <= high
    return None if ok else f"{noun} in {'(' if setting.low_open else '['}{_num(low)}, {_num(high)}]"


def accepts(setting: Setting) -> str:
    """What a setting accepts, for the docs ("an integer >= 1", "one of text, json")."""
    if setting.choices is not None:
        return ", ".join(f"`{choice}`" for choice in setting.choices)
    if setting.kind == BOOL:
        return "`true`, `false`"
    if setting.kind == STR and setting.metavar is not None:
        return f"`{setting.metavar}`"
    if setting.kind in (STR, PATH, FOLDER):
        return {STR: "text", PATH: "a file path", FOLDER: "a folder path"}[setting.kind]
    noun = "an integer" if setting.kind == INT else "a number"
    if setting.low is None:
        return noun
    if setting.high is None:
        return f"{noun} {'>' if setting.low_open else '>='} {_num(setting.low)}"
    return f"{noun} in {'(' if setting.low_open else '['}{_num(setting.low)}, {_num(setting.high)}]"


def check(settings: Iterable[Setting], config: Any, error: Callable[[Setting, str, Any], Exception]) -> None:
    """Checks every setting's value on ``config``; raises ``error(setting, expected, value)`` for the first bad one."""
    for setting in settings:
        value = getattr(config, setting.name)
        if setting.validate is not None and value is not None:
            setting.validate(setting.key or setting.name, value)
            continue
        problem = expected(setting, value)
        if problem is not None:
            raise error(setting, problem, value)


def restart_only(settings: Iterable[Setting]) -> tuple[str, ...]:
    """The fields a reload cannot change."""
    return tuple(s.name for s in settings if s.restart)


def add_flags(parser: argparse.ArgumentParser, settings: Iterable[Setting], *,
              defaults: bool = False) -> None:
    """Adds a flag per setting that has one, in declaration order, with argparse groups by ``group``.

    ``defaults=False`` leaves every flag's default None, so that a value from a file shows through
    (the router); True gives argparse the declared defaults (the expert, which has no file).
    """
    groups: dict[str, Any] = {}
    for setting in settings:
        if setting.flag is None:
            continue
        target: Any = parser
        if setting.group is not None:
            if setting.group not in groups:
                groups[setting.group] = parser.add_argument_group(setting.group)
            target = groups[setting.group]
        help_text = setting.help.replace("`", "")
        if not setting.required and (setting.default_doc is not None
                                     or (setting.default is not None and setting.kind != BOOL)):
            help_text = f"{help_text} (default: {setting.shown_default})"
        kwargs: dict[str, Any] = {"dest": setting.name, "help": help_text}
        if setting.kind == BOOL:
            kwargs["action"] = "store_false" if setting.negate else "store_true"
            kwargs["default"] = setting.default if defaults else None
        else:
            kwargs["default"] = setting.default if defaults else None
            kwargs["type"] = setting.flag_type or _FLAG_TYPES.get(setting.kind, str)
            if setting.metavar is not None:
                kwargs["metavar"] = setting.metavar
            if setting.choices is not None:
                kwargs["choices"] = setting.choices
            if setting.required:
                kwargs["required"] = True
        target.add_argument(setting.flag, **kwargs)


def typed_from_file(setting: Setting, value: Any, base_dir: str,
                    error: Callable[[Setting, str, Any], Exception]) -> Any:
    """A YAML value as the config field takes it: type checked, a relative path joined to ``base_dir``.

    Bounds are left to the config's own check, so a file and a flag get the same message.
    """
    if value is None and setting.nullable:
        return None
    if setting.kind == BOOL:
        if not isinstance(value, bool):
            raise error(setting, "true or false", value)
        return value
    if setting.kind in (STR, PATH, FOLDER):
        if not isinstance(value, str) or not value:
            raise error(setting, {STR: "a non-empty string", PATH: "a file path",
                                  FOLDER: "a folder path"}[setting.kind], value)
        if setting.kind == STR:
            return value
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))
    if setting.kind == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(setting, "an integer", value)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(setting, "a number", value)
    return float(value)


def _flag_cell(setting: Setting) -> str:
    if setting.kind == BOOL:
        return f"`{setting.flag}`"
    shown = setting.metavar or "|".join(setting.choices or ("VALUE",))
    return f"`{setting.flag} {shown}`".replace("|", "\\|")


def _default_cell(setting: Setting) -> str:
    return setting.default_doc if setting.default_doc is not None else f"`{setting.shown_default}`"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def flag_table(settings: Iterable[Setting], extra_rows: Iterable[str] = (), *, reloads: bool = True) -> str:
    """The Markdown table of flags: flag, default, what it accepts, (reload or restart,) meaning.

    A flag without a YAML key is read once at start, so it counts as restart-only.
    """
    head = ["flag", "default", "accepts", *(["on reload"] if reloads else []), "meaning"]
    rows = [_row(head), _row("---" for _ in head), *extra_rows]
    for s in settings:
        if s.flag is None:
            continue
        applies = ["restart" if s.restart or s.key is None else "applied"] if reloads else []
        if s.kind == BOOL:  # a switch: what the setting is while the flag is not given
            default, accepted = ("on" if s.default else "off"), "no value"
        else:
            default, accepted = _default_cell(s), accepts(s)
        rows.append(_row([_flag_cell(s), default, accepted, *applies, s.doc or s.help]))
    return "\n".join(rows)


def file_table(settings: Iterable[Setting], extra_rows: Iterable[str] = ()) -> str:
    """The Markdown table of YAML keys: key, default, what it accepts, reload or restart, meaning."""
    head = ["key", "default", "accepts", "on reload", "meaning"]
    rows = [_row(head), _row("---" for _ in head), *extra_rows]
    for s in settings:
        if s.key is None:
            continue
        meaning = s.doc or s.help
        if s.flag is not None:
            meaning = f"`false`: as `{s.flag}`" if s.negate else f"as `{s.flag}`"
        rows.append(_row([f"`{s.key}`", _default_cell(s), accepts(s), "restart" if s.restart else "applied",
                          meaning]))
    return "\n".join(rows)


def replace_between_markers(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- NAME -->`` and ``<!-- /NAME -->`` replaced by ``body``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text or end not in text:
        raise ValueError(f"markers {start} ... {end} not found")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def between_markers(text: str, name: str) -> str:
    """The part of ``text`` between ``<!-- NAME -->`` and ``<!-- /NAME -->``, without the newlines around it."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")

