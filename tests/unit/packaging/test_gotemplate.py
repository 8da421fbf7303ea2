"""The test-only Go-template renderer against outputs Go's text/template + Helm give for the same input."""

from __future__ import annotations

import pytest
from gotemplate import Renderer, TemplateError


def run(source: str, values: dict | None = None, defines: str = "") -> str:
    renderer = Renderer({"t": source, "d": defines})
    root = {"Values": values or {}, "Release": {"Name": "rel"}, "Chart": {"Name": "c", "AppVersion": "1.0"}}
    return renderer.render("t", root)


def test_trim_markers() -> None:
    assert run("a  {{- 1 -}}  b") == "a1b"
    assert run("a\n{{- if true }}\nx\n{{- end }}\nb") == "a\nx\nb"
    assert run("a {{/* gone */}} b") == "a  b"


def test_conditionals_and_else_if() -> None:
    source = "{{ if eq .Values.n 1 }}one{{ else if eq .Values.n 2 }}two{{ else }}many{{ end }}"
    assert [run(source, {"n": n}) for n in (1, 2, 3)] == ["one", "two", "many"]
    assert run("{{ if .Values.m }}y{{ else }}n{{ end }}", {"m": {}}) == "n"


def test_range_with_and_variables() -> None:
    assert run("{{ range .Values.l }}[{{ . }}|{{ $.Release.Name }}]{{ end }}", {"l": ["a", "b"]}) == "[a|rel][b|rel]"
    assert run("{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }};{{ end }}", {"m": {"b": 2, "a": 1}}) == "a=1;b=2;"
    assert run("{{ with .Values.x }}{{ .y }}{{ end }}", {"x": {"y": "z"}}) == "z"
    assert run("{{ $n := default .Chart.Name .Values.o }}{{ $n }}", {"o": ""}) == "c"


def test_helm_functions() -> None:
    assert run("{{ .Values.m | toYaml | nindent 2 }}", {"m": {"b": 1, "a": [1]}}) == "\n  a:\n  - 1\n  b: 1"
    assert run('{{ printf "%s-%s" "a" "b" | trunc 3 | trimSuffix "-" }}') == "a-b"
    assert run("{{ .Values.v | quote }}", {"v": 1800}) == '"1800"'
    assert run("{{ ternary 1 0 .Values.b }}", {"b": False}) == "0"
    assert run('{{ include "n" (list . 7) }}', defines='{{ define "n" }}{{ index . 1 }}{{ end }}') == "7"


def test_strict_about_missing_values_and_unknown_functions() -> None:
    with pytest.raises(TemplateError, match="no field 'typo'"):
        run("{{ .Values.typo }}")
    with pytest.raises(TemplateError, match="not supported"):
        run("{{ sha256sum .Values.x }}", {"x": "a"})
    with pytest.raises(TemplateError, match="unclosed"):
        run("{{ if true }}x")
    with pytest.raises(TemplateError, match="must be set"):
        run('{{ required "x must be set" .Values.x }}', {"x": ""})
