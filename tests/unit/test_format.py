"""Docker's template forms (swarm/api/templates.py), as swarmctl's --format uses them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.api.templates import Format, TemplateError, header_word, parse, snake_case
from swarm.cli.formatting import field_name

ROWS = [{"ID": "abc", "Name": "web", "DesiredState": "Running"},
        {"ID": "defghi", "Name": "api", "DesiredState": "Shutdown"}]


def test_fields_json_and_functions() -> None:
    assert Format.parse("{{.Name}}: {{ .ID }}").render(ROWS) == "web: abc\napi: defghi"
    assert json.loads(Format.parse("{{json .}}").render(ROWS[:1])) == ROWS[0]
    assert Format.parse("{{upper .Name}} {{lower .DesiredState}}").render(ROWS[:1]) == \
        "WEB running"


def test_table_has_docker_headers_and_aligned_columns() -> None:
    text = Format.parse("table {{.ID}}\\t{{.Name}}\\t{{.DesiredState}}").render(ROWS)
    assert text.splitlines() == ["ID       NAME   DESIRED STATE",
                                 "abc      web    Running",
                                 "defghi   api    Shutdown"]


def test_lookup_is_docker_style_on_proto_names() -> None:
    data = {"id": "x1", "spec": {"name": "web", "task": {"container": {"image": "busybox"}}},
            "created_at": "2026"}
    fmt = Format.parse("{{.ID}} {{.Spec.Name}} {{.Spec.Task.Container.Image}} {{.CreatedAt}}")
    assert fmt.render([data]) == "x1 web busybox 2026"
    assert Format.parse("{{.Spec.Nope}}").render([data], strict=False) == "<no value>"
    with pytest.raises(TemplateError, match="no field 'Nope'"):
        Format.parse("{{.Spec.Nope}}").render([data])


def test_bad_templates_name_the_problem() -> None:
    with pytest.raises(TemplateError, match="expected"):
        parse("{{range .Items}}")
    with pytest.raises(TemplateError, match="unbalanced"):
        parse("{{.Name")
    with pytest.raises(TemplateError, match="table needs columns"):
        Format.parse("table")
    with pytest.raises(TemplateError, match=r"unknown field \{\{\.Nmae\}\}"):
        Format.parse("{{.Nmae}}").check_fields(["ID", "Name"])
    Format.parse("{{.name}}").check_fields(["ID", "Name"])  # case does not matter


def test_names() -> None:
    assert snake_case("CreatedAt") == "created_at"
    assert snake_case("NodeID") == "node_id"
    assert header_word("DesiredState") == "DESIRED STATE"
    assert field_name("DESIRED STATE") == "DesiredState"
    assert field_name("NETWORK ID") == "ID"


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40))
def test_text_without_actions_is_kept(text: str) -> None:
    assert Format.parse("x" + text).line({}) == "x" + text.replace("\\t", "\t").replace(
        "\\n", "\n")
