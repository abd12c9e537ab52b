"""Docker's text templates, the small part of Go's text/template that people
script against, shared by the agent (service templates in a task's env and
hostname: agent/templates.py) and swarmctl (`--format` on ls, ps and inspect).

    {{.Name}}  {{ .Spec.Name }}   a field (a path of fields) of the data
    {{json .}}  {{json .Spec}}    the value as JSON
    {{upper .Name}} {{lower .X}} {{title .X}}
    table {{.ID}}\\t{{.Name}}      a table: a header row (the field names, as
                                  docker prints them: DesiredState -> DESIRED STATE),
                                  then one row each, the columns aligned

`\\t` and `\\n` written as two characters (as a shell passes them) mean a tab and
a newline. Anything else between braces is refused when the template is parsed,
naming what is wrong: a template is checked before anything is sent.

Lookup: the data is nested mappings (the listing's row, or an API object as
JSON-ready data). A field matches a key exactly, else case-insensitively, else
in snake_case (`.Spec.Name` finds spec.name, `.CreatedAt` created_at), so the
Go-style names docker users type work on the proto field names too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FUNCTIONS = ("json", "upper", "lower", "title")
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"^\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?$")
NO_VALUE = "<no value>"  # Go's text for a missing map key


class TemplateError(ValueError):
    """A template that does not parse, or a field that is not there."""


@dataclass(frozen=True)
class Action:
    """One {{...}}: an optional function and a path ('.' or '.A.B')."""

    function: str
    path: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(part for part in self.path.split(".") if part)

    def __str__(self) -> str:
        return "{{" + (f"{self.function} " if self.function else "") + self.path + "}}"


Part = str | Action


def parse_action(text: str) -> Action:
    words = text.split()
    if len(words) == 1 and _PATH.match(words[0]):
        return Action("", words[0])
    if len(words) == 2 and words[0] in FUNCTIONS and _PATH.match(words[1]):
        return Action(words[0], words[1])
    raise TemplateError(f"cannot read {{{{{text.strip()}}}}}: expected {{{{.Field}}}} or "
                        f"{{{{FUNCTION .Field}}}} with FUNCTION one of {', '.join(FUNCTIONS)}")


def parse(text: str) -> list[Part]:
    """Literal text and actions, in order; raises TemplateError."""
    parts: list[Part] = []
    position = 0
    for match in _ACTION.finditer(text):
        if match.start() > position:
            parts.append(text[position:match.start()])
        parts.append(parse_action(match.group(1)))
        position = match.end()
    rest = text[position:]
    if "{{" in rest or "}}" in rest:
        raise TemplateError(f"unbalanced braces in {rest!r}")
    if rest:
        parts.append(rest)
    return parts


def substitute(parts: Sequence[Part], value_of: Callable[[Action], str]) -> str:
    return "".join(part if isinstance(part, str) else value_of(part) for part in parts)


# ---------------------------------------------------------------- looking fields up


def snake_case(name: str) -> str:
    """'CreatedAt' -> 'created_at', 'ID' -> 'id', 'NodeID' -> 'node_id'."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", spaced)
    return spaced.lower()


_MISSING = object()


def _field(data: Any, name: str) -> Any:
    if not isinstance(data, Mapping):
        return _MISSING
    if name in data:
        return data[name]
    lowered = name.lower()
    snake = snake_case(name)
    for key, value in data.items():
        if isinstance(key, str) and (key.lower() == lowered or key == snake):
            return value
    return _MISSING


def lookup(data: Any, fields: Sequence[str]) -> Any:
    """The value at the path; raises KeyError naming the first missing field."""
    value = data
    for name in fields:
        value = _field(value, name)
        if value is _MISSING:
            raise KeyError(name)
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (Mapping, list)):
        return "map[" + " ".join(f"{k}:{_text(v)}" for k, v in value.items()) + "]" \
            if isinstance(value, Mapping) else "[" + " ".join(_text(v) for v in value) + "]"
    return str(value)


def apply(function: str, value: Any) -> str:
    if function == "json":
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = _text(value)
    if function == "upper":
        return text.upper()
    if function == "lower":
        return text.lower()
    if function == "title":
        return text.title()
    return text


# ---------------------------------------------------------------- a format


def _unescape(text: str) -> str:
    return text.replace("\\t", "\t").replace("\\n", "\n")


def header_word(field: str) -> str:
    """Docker's header for a field: 'DesiredState' -> 'DESIRED STATE', 'ID' -> 'ID'."""
    return snake_case(field).replace("_", " ").upper()


@dataclass(frozen=True)
class Format:
    """A parsed `--format`."""

    parts: tuple[Part, ...]
    table: bool = False

    @classmethod
    def parse(cls, text: str) -> Format:
        body = text
        table = body.startswith("table")
        if table:
            body = body[len("table"):].strip()
            if not body:
                raise TemplateError("a table needs columns, e.g. 'table {{.ID}}\\t{{.Name}}'")
        return cls(tuple(parse(_unescape(body))), table)

    @property
    def actions(self) -> list[Action]:
        return [part for part in self.parts if isinstance(part, Action)]

    def check_fields(self, known: Sequence[str]) -> None:
        """Raise TemplateError for a top-level field not among `known` (a listing's
        columns), before anything is sent."""
        sample = dict.fromkeys(known, "")
        for action in self.actions:
            if action.fields:
                try:
                    lookup(sample, action.fields[:1])
                except KeyError:
                    raise TemplateError(f"unknown field {action} (known: "
                                        f"{', '.join('.' + k for k in known)})") from None

    def line(self, data: Any, *, strict: bool = True) -> str:
        """The template filled in with one item. strict: a missing field raises
        TemplateError; otherwise it prints docker's '<no value>'."""
        def value_of(action: Action) -> str:
            try:
                return apply(action.function, lookup(data, action.fields))
            except KeyError as missing:
                if strict:
                    raise TemplateError(f"{action}: no field {missing.args[0]!r}") from None
                return NO_VALUE
        return substitute(self.parts, value_of)

    def render(self, items: Sequence[Any], *, strict: bool = True) -> str:
        """Every item, one per line; a table gets its header and aligned columns."""
        lines = [self.line(item, strict=strict) for item in items]
        if not self.table:
            return "\n".join(lines)
        header = substitute(self.parts, lambda action: header_word(action.fields[-1])
                            if action.fields else "")
        return align([header, *lines])


def align(lines: Sequence[str], gap: int = 3) -> str:
    """Tab-separated cells as aligned columns (as docker's tabwriter does)."""
    rows = [line.split("\t") for line in lines]
    widths: list[int] = []
    for row in rows:
        for index, cell in enumerate(row[:-1]):
            if index == len(widths):
                widths.append(0)
            widths[index] = max(widths[index], len(cell))
    return "\n".join(
        "".join(cell.ljust(widths[i] + gap) if i < len(row) - 1 else cell
                for i, cell in enumerate(row)).rstrip()
        for row in rows)
