"""Compose's variable substitution ($VAR, ${VAR:-default}, ${VAR:?error}, ...), pure."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .model import Location, StackError, quote

_VAR_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*)|\{(?P<braced>[^}]*)\}|(?P<invalid>))")
_BRACED_RE = re.compile(r"([_a-zA-Z][_a-zA-Z0-9]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def interpolate(text: str, where: Location, environ: Mapping[str, str],
                on_unset: Callable[[str, Location], None]) -> str:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}, $$."""
    if "$" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("named")
        operator, argument = "", ""
        if name is None:
            braced = match.group("braced")
            parsed = _BRACED_RE.fullmatch(braced) if braced is not None else None
            if parsed is None:
                raise StackError(where, "", f"invalid interpolation format in {quote(text)}: "
                                 "expected $VAR or ${VAR} (use $$ for a literal $)")
            name, operator, argument = parsed.group(1), parsed.group(2) or "", parsed.group(3)
        value = environ.get(name)
        if operator in (":-", "-"):
            unset = value is None or (operator == ":-" and value == "")
            return argument if unset else str(value)
        if operator in (":?", "?"):
            if value is None or (operator == ":?" and value == ""):
                raise StackError(where, "", f"required variable {name} is missing a value"
                                 + (f": {argument}" if argument else ""))
            return value
        if operator in (":+", "+"):
            is_set = value is not None and (operator == "+" or value != "")
            return argument if is_set else ""
        if value is None:
            on_unset(name, where)
            return ""
        return value

    return _VAR_RE.sub(substitute, text)
