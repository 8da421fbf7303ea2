"""YAML as `kubectl apply` reads it: PyYAML's safe loader, plus duplicate keys refused and aliases bounded.

PyYAML keeps the last of two equal keys without a word (kubectl's strict decoding refuses them), and
it expands aliases by reference: a few lines of nested aliases ("billion laughs") name gigabytes once
a consumer walks or serialises the result, and an alias inside its own anchor makes a cyclic
structure that recurses forever. Each document's node graph is measured before it is constructed:
a cycle, or more than `MAX_EXPANDED` nodes and scalar characters once every alias is expanded, is
refused with the line where it happens. No other loader offers this; it is small enough to keep here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: Expanded size a pipeline file may reach (nodes plus scalar characters): a spec is at most 256 KiB
#: of JSON, so this only refuses documents no resource could be made of.
MAX_EXPANDED = 8 * 2**20
MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (merge keys `<<` may still be overridden)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: the base constructor reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_all(text: str) -> Iterator[Any]:
    """Every document of `text`; yaml.YAMLError (with a line) for invalid, duplicate-key or explosive YAML."""
    loader = StrictLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            _expanded_size(node, {}, set())
            yield loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes plus scalar characters of `node` with aliases expanded (memoized: aliases are shared nodes)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise yaml.composer.ComposerError(None, None, "an alias refers to its own anchor (a cycle)", node.start_mark)
    if isinstance(node, ScalarNode):
        size = 1 + len(node.value)
    else:
        open_.add(key)
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        size = 1 + sum(_expanded_size(child, sizes, open_) for child in children)
        open_.discard(key)
    if size > MAX_EXPANDED:
        raise yaml.composer.ComposerError(
            None, None, f"aliases expand beyond {MAX_EXPANDED} nodes and characters", node.start_mark
        )
    sizes[key] = size
    return size
