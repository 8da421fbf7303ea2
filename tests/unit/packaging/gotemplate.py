"""A test-only renderer for the subset of Go templates (with Helm's functions) that our chart uses.

No `helm` binary can be installed here (ENVIRONMENT.md), so the chart tests render the templates with this
instead; where `helm` is on PATH, `test_chart.py` also runs `helm lint` and `helm template`. It is stricter
than Helm on purpose: a reference to a values key that does not exist is an error (Helm prints
`<no value>`), so a typo in a template fails the tests.

Supported: `{{ pipeline }}`, `{{-`/`-}}` trimming, comments, `define`/`include`/`template`,
`if`/`else if`/`else`, `range` (with `$v :=` or `$k, $v :=`), `with`, `$var :=`, parentheses, and the
functions in `FUNCTIONS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
    |(?P<num>-?\d+(?:\.\d+)?)
    |(?P<decl>:=)
    |(?P<sym>[|(),=])
    |(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    |(?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


class TemplateError(Exception):
    """A template that does not parse or evaluate, with the template's name."""


@dataclass
class Node:
    """One node of the parse tree: text, an action, or a block with its bodies."""

    kind: str  # text | action | if | range | with | define | template
    arg: str = ""
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s) pieces, applying the `{{-` / `-}}` trim markers."""
    pieces: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            pieces.append(("action", body))
        trim_next, pos = bool(match.group(3)), match.end()
    tail = source[pos:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    return [p for p in pieces if p != ("text", "")]


def _parse(pieces: list[tuple[str, str]], pos: int, name: str) -> tuple[list[Node], int, str]:
    """Parse until `end`/`else`; returns the nodes, the next position and the closing action."""
    nodes: list[Node] = []
    while pos < len(pieces):
        kind, text = pieces[pos]
        pos += 1
        if kind == "text":
            nodes.append(Node("text", text))
            continue
        keyword, _, rest = text.partition(" ")
        if keyword in ("end", "else"):
            return nodes, pos, text
        if keyword in ("if", "range", "with", "define"):
            block = Node(keyword, rest.strip())
            block.body, pos, closer = _parse(pieces, pos, name)
            pos = _parse_else(block, pieces, pos, closer, name)
            nodes.append(block)
        elif keyword == "template":
            nodes.append(Node("template", rest.strip()))
        else:
            nodes.append(Node("action", text))
    return nodes, pos, ""


def _parse_else(block: Node, pieces: list[tuple[str, str]], pos: int, closer: str, name: str) -> int:
    if closer == "end":
        return pos
    if not closer:
        raise TemplateError(f"{name}: unclosed {{{{ {block.kind} }}}}")
    rest = closer.removeprefix("else").strip()
    if rest.startswith("if "):
        nested = Node("if", rest[3:].strip())
        nested.body, pos, closer = _parse(pieces, pos, name)
        pos = _parse_else(nested, pieces, pos, closer, name)
        block.orelse = [nested]
        return pos
    block.orelse, pos, closer = _parse(pieces, pos, name)
    if closer != "end":
        raise TemplateError(f"{name}: expected {{{{ end }}}} after {{{{ else }}}} of {block.kind}")
    return pos


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise TemplateError(f"cannot tokenize {text[pos:]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _truthy(value: Any) -> bool:
    """Go templates' truth: false, 0, nil and empty strings, lists and maps are false."""
    return value not in (None, False, 0, "") and not (isinstance(value, list | dict) and not value)


def _go_str(value: Any) -> str:
    """How Go's fmt prints a value in a template (Helm's numbers are float64: 1.0 prints as 1)."""
    if value is None:
        raise TemplateError("rendered a nil value")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict):
        raise TemplateError(f"rendered a {type(value).__name__} without toYaml: {value!r}")
    return str(value)


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n").removesuffix("\n...")


def _indent(width: int, text: str) -> str:
    pad = " " * int(width)
    return "\n".join(pad + line for line in _go_str(text).split("\n"))


def _required(message: str, value: Any) -> Any:
    if not _truthy(value):
        raise TemplateError(message)
    return value


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[sdv]", "{}", fmt).format(*(_go_str(a) for a in args))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "default": lambda fallback, value=None: value if _truthy(value) else fallback,
    "trunc": lambda n, s: s[: int(n)],
    "trimSuffix": lambda suffix, s: s.removesuffix(suffix),
    "contains": lambda sub, s: sub in s,
    "printf": _printf,
    "quote": lambda *args: " ".join(json.dumps(_go_str(a)) for a in args),
    "toYaml": _to_yaml,
    "toJson": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "indent": _indent,
    "required": _required,
    "list": lambda *args: list(args),
    "index": lambda obj, *keys: _index(obj, keys),
    "join": lambda sep, items: sep.join(_go_str(i) for i in items),
    "eq": lambda a, *others: any(a == o for o in others),
    "ne": lambda a, b: a != b,
    "not": lambda v: not _truthy(v),
    "and": lambda *args: next((a for a in args if not _truthy(a)), args[-1]),
    "or": lambda *args: next((a for a in args if _truthy(a)), args[-1]),
    "empty": lambda v: not _truthy(v),
    "lower": lambda s: s.lower(),
    "int": lambda v: int(v),
    "toString": _go_str,
    "ternary": lambda yes, no, condition: yes if _truthy(condition) else no,
}


def _index(obj: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    return obj


def _field(value: Any, path: list[str], where: str) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"{where}: no field {part!r} (in .{'.'.join(path)})")
        value = value[part]
    return value


class Renderer:
    """Holds every template of a chart (named `templates/<file>`) and the `define`d ones."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.trees: dict[str, list[Node]] = {}
        self.defines: dict[str, list[Node]] = {}
        for name, source in sources.items():
            nodes, _, closer = _parse(_lex(source), 0, name)
            if closer:
                raise TemplateError(f"{name}: unexpected {{{{ {closer} }}}}")
            self.trees[name] = self._collect_defines(nodes)

    @classmethod
    def from_chart(cls, chart: Path) -> Renderer:
        files = sorted((chart / "templates").glob("*"))
        return cls({f"templates/{p.name}": p.read_text() for p in files if p.suffix in (".yaml", ".tpl", ".txt")})

    def _collect_defines(self, nodes: list[Node]) -> list[Node]:
        kept = []
        for node in nodes:
            if node.kind == "define":
                self.defines[json.loads(node.arg)] = node.body
            else:
                kept.append(node)
        return kept

    def render(self, name: str, root: dict[str, Any]) -> str:
        return self._exec(self.trees[name], root, {"$": root}, name)

    def _exec(self, nodes: list[Node], dot: Any, scope: dict[str, Any], where: str) -> str:
        out: list[str] = []
        for node in nodes:
            out.append(self._exec_node(node, dot, scope, where))
        return "".join(out)

    def _exec_node(self, node: Node, dot: Any, scope: dict[str, Any], where: str) -> str:
        if node.kind == "text":
            return node.arg
        if node.kind == "action":
            value = self._pipeline(node.arg, dot, scope, where)
            return "" if node.arg.split(":=")[0].strip().startswith("$") and ":=" in node.arg else _go_str(value)
        if node.kind == "template":
            name, _, arg = node.arg.partition(" ")
            return self._include(json.loads(name), self._pipeline(arg, dot, scope, where) if arg else None, where)
        inner = dict(scope)
        if node.kind == "range":
            return self._range(node, dot, inner, where)
        value = self._pipeline(node.arg, dot, inner, where)
        if not _truthy(value):
            return self._exec(node.orelse, dot, dict(scope), where)
        return self._exec(node.body, value if node.kind == "with" else dot, inner, where)

    def _range(self, node: Node, dot: Any, scope: dict[str, Any], where: str) -> str:
        names, expr = [], node.arg
        if ":=" in node.arg:
            decl, expr = node.arg.split(":=", 1)
            names = [n.strip() for n in decl.split(",")]
        items = self._pipeline(expr, dot, scope, where)
        pairs = sorted(items.items()) if isinstance(items, dict) else list(enumerate(items or []))
        if not pairs:
            return self._exec(node.orelse, dot, scope, where)
        out = []
        for key, value in pairs:
            if len(names) == 2:
                scope[names[0]], scope[names[1]] = key, value
            elif names:
                scope[names[0]] = value
            out.append(self._exec(node.body, value, scope, where))
        return "".join(out)

    def _include(self, name: str, dot: Any, where: str) -> str:
        if name not in self.defines:
            raise TemplateError(f"{where}: no template {name!r} defined")
        return self._exec(self.defines[name], dot, {"$": dot}, f"{where} -> {name}")

    def _pipeline(self, text: str, dot: Any, scope: dict[str, Any], where: str) -> Any:
        tokens = _tokens(text)
        target = None
        if len(tokens) > 2 and tokens[0][0] == "var" and tokens[1] in (("decl", ":="), ("sym", "=")):
            target, tokens = tokens[0][1], tokens[2:]
        value, pos = self._commands(tokens, 0, dot, scope, where)
        if pos != len(tokens):
            raise TemplateError(f"{where}: unexpected {tokens[pos][1]!r} in {text!r}")
        if target:
            scope[target] = value
        return value

    def _commands(self, tokens: list, pos: int, dot: Any, scope: dict, where: str) -> tuple[Any, int]:
        """Evaluate `cmd | cmd | ...`; the value of each command is the last argument of the next."""
        value, piped = None, False
        while True:
            args, pos = self._operands(tokens, pos, dot, scope, where)
            value = self._call(args, [value] if piped else [], where)
            piped = True
            if pos < len(tokens) and tokens[pos] == ("sym", "|"):
                pos += 1
                continue
            return value, pos

    def _operands(self, tokens: list, pos: int, dot: Any, scope: dict, where: str) -> tuple[list, int]:
        args: list[Any] = []
        while pos < len(tokens) and tokens[pos] not in (("sym", "|"), ("sym", ")")):
            kind, text = tokens[pos]
            pos += 1
            if (kind, text) == ("sym", "("):
                value, pos = self._commands(tokens, pos, dot, scope, where)
                if pos >= len(tokens) or tokens[pos] != ("sym", ")"):
                    raise TemplateError(f"{where}: unbalanced parenthesis")
                pos += 1
                args.append(("value", value))
            else:
                args.append(("value", self._term(kind, text, dot, scope, where)) if kind != "ident" else (kind, text))
        return args, pos

    def _term(self, kind: str, text: str, dot: Any, scope: dict, where: str) -> Any:
        if kind == "str":
            return text[1:-1] if text.startswith("`") else json.loads(text)
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "field":
            return dot if text == "." else _field(dot, text[1:].split("."), where)
        if kind == "var":
            name, *path = text.split(".")
            if name not in scope:
                raise TemplateError(f"{where}: undefined variable {name}")
            return _field(scope[name], path, where)
        raise TemplateError(f"{where}: unexpected {text!r}")

    def _call(self, args: list[tuple[str, Any]], piped: list[Any], where: str) -> Any:
        if not args:
            raise TemplateError(f"{where}: empty command")
        kind, head = args[0]
        values = [v for _, v in args[1:]] + piped
        if kind == "value":
            if len(args) > 1 or piped:
                raise TemplateError(f"{where}: {head!r} is not a function")
            return head
        if head in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[head]
        if head == "include":
            return self._include(values[0], values[1], where)
        if head not in FUNCTIONS:
            raise TemplateError(f"{where}: function {head!r} is not supported by the test renderer")
        try:
            return FUNCTIONS[head](*values)
        except TemplateError:
            raise
        except Exception as exc:
            raise TemplateError(f"{where}: {head}: {exc}") from exc


def render_chart(chart: Path, values: dict[str, Any], release: str = "metaspec", namespace: str = "metaspec-system"):
    """Render every manifest template of `chart` like `helm template`; returns {template name: text}."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    root = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta.get("appVersion", "")},
    }
    renderer = Renderer.from_chart(chart)
    return {
        name: renderer.render(name, root)
        for name in renderer.trees
        if not name.endswith(".tpl") and not name.endswith("NOTES.txt")
    } | {"templates/NOTES.txt": renderer.render("templates/NOTES.txt", root)}
