"""YAML text -> a tree of Nodes that keep their line and column, with merge keys,
bounded nesting and variables interpolated in string values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from .interpolation import interpolate
from .model import Location, Node, StackError, StackWarning, describe, quote
from .schema import MAX_DEPTH, MAX_NODES

_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                         "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"})


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values node stands for once every alias is expanded, counted
    once per distinct node (sizes memoizes by id): linear in the file, however
    large the expansion. A recursive alias counts 0 here (_convert refuses it)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 0
    total = 1 + sum(_expanded_size(child, sizes) for child in _children(node))
    sizes[id(node)] = total
    return total


def _largest_within(root: yaml.Node, sizes: dict[int, int]) -> yaml.Node:
    """The innermost node over MAX_NODES: where the bomb is, to point at."""
    node = root
    while True:
        over = [c for c in _children(node) if sizes.get(id(c), 0) > MAX_NODES]
        if not over:
            return node
        node = over[0]


class YamlReader:
    """Turns YAML text into Nodes, interpolating ${VAR} in string values."""

    def __init__(self, filename: str, environ: Mapping[str, str],
                 warnings: list[StackWarning]) -> None:
        self.filename = filename
        self.environ = environ
        self.warnings = warnings
        self._unset_reported: set[str] = set()

    def at(self, mark: Any) -> Location:
        return Location(self.filename, mark.line + 1, mark.column + 1)

    def load(self, text: str) -> Node | None:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            sizes: dict[int, int] = {}
            if _expanded_size(root, sizes) > MAX_NODES:
                bomb = _largest_within(root, sizes)
                raise StackError(self.at(bomb.start_mark), "",
                                 f"this value expands to {sizes[id(bomb)]} values through aliases "
                                 f"(*name) of aliases, over the limit of {MAX_NODES}: refused "
                                 "as an alias bomb")
            return self._convert(loader, root, 0, frozenset())
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            where = self.at(mark) if mark is not None else Location(self.filename, 1, 1)
            problem = error.problem or error.context or "malformed"
            context = f" ({error.context})" if error.context and error.problem else ""
            raise StackError(where, "", f"invalid YAML: {problem}{context}") from None
        except yaml.YAMLError as error:
            raise StackError(Location(self.filename, 1, 1), "", f"invalid YAML: {error}") from None
        except RecursionError:
            raise StackError(Location(self.filename, 1, 1), "",
                             "invalid YAML: nested too deeply") from None
        finally:
            loader.dispose()

    def _convert(self, loader: yaml.SafeLoader, node: yaml.Node, depth: int,
                 active: frozenset[int]) -> Node:
        where = self.at(node.start_mark)
        if depth > MAX_DEPTH:
            raise StackError(where, "", f"nested more than {MAX_DEPTH} levels deep")
        if id(node) in active:
            # An alias of its own ancestor: an infinite document.
            raise StackError(where, "", "invalid YAML: a recursive alias")
        inner = active | {id(node)}
        if isinstance(node, yaml.MappingNode):
            written = {id(key_node) for key_node, _ in node.value}
            loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
            items: dict[str, Node] = {}
            explicit: dict[str, int] = {}  # key -> its line, for keys written here
            for key_node, value_node in node.value:
                key_where = self.at(key_node.start_mark)
                if not isinstance(key_node, yaml.ScalarNode):
                    kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                    raise StackError(key_where, "", f"mapping keys must be strings, not {kind}")
                key = describe(self._scalar(loader, key_node))
                # Keys merged in come first and are overridden by the mapping's own;
                # only a key written twice in the mapping itself is an error.
                if key in explicit and id(key_node) in written:
                    raise StackError(key_where, "", f"duplicate key {quote(key)} (first at line "
                                     f"{explicit[key]})")
                if id(key_node) in written:
                    explicit[key] = key_where.line
                value = self._convert(loader, value_node, depth + 1, inner)
                # An empty value (`web:`) has no text of its own: point at its key.
                items[key] = Node(None, key_where) if value.value is None else value
            return Node(items, where)
        if isinstance(node, yaml.SequenceNode):
            return Node([self._convert(loader, item, depth + 1, inner) for item in node.value],
                        where)
        scalar = self._scalar(loader, node)
        if isinstance(scalar, str):
            scalar = self.interpolate(scalar, where)
        return Node(scalar, where)

    @staticmethod
    def _scalar(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        # Timestamps, binary and other tags stay the text that was written, as in compose.
        if node.tag in _PLAIN_TAGS:
            return loader.construct_object(node)
        return str(node.value)

    def interpolate(self, text: str, where: Location) -> str:
        return interpolate(text, where, self.environ, self._warn_unset)

    def _warn_unset(self, name: str, where: Location) -> None:
        if name not in self._unset_reported:
            self._unset_reported.add(name)
            self.warnings.append(StackWarning(
                where, "", f"the variable {name} is not set; using an empty string"))
