"""`metaspec local` on hostile or careless input: a message naming the problem, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from metaspec.api import TeacherGeneration
from metaspec.artifacts import Unreachable, Uri
from metaspec.artifacts.store import _translate
from metaspec.local.cli import main
from metaspec.local.display import LiveDisplay, render_table
from metaspec.local.state import State
from metaspec.local.storage import s3_uris
from metaspec.trainer.progress import RichReporter

GOOD = """apiVersion: metaspec.dev/v1alpha1
kind: TeacherGeneration
metadata: {name: teacher}
spec:
  model: {uri: s3://bkt/model}
  dataset: {uri: builtin://prompts}
  output: {uri: s3://bkt/teacher}
"""
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)


def pipeline(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["run", str(path), "--state-dir", str(tmp_path / "state")]


def corrupt_state(tmp_path: Path, verb: str) -> list[str]:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text('{"version": 1, "resources": {"x": {"kind": 3}}, "runnerPid": "me"}')
    args = pipeline(tmp_path, GOOD) if verb == "run" else [verb, "--state-dir", str(tmp_path / "state")]
    return args


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "kind as a list": (lambda t: pipeline(t, GOOD.replace("kind: TeacherGeneration", "kind: [a]")), "kind"),
    "kind as a map": (lambda t: pipeline(t, GOOD.replace("kind: TeacherGeneration", "kind: {a: 1}")), "kind"),
    "metadata a string": (lambda t: pipeline(t, GOOD.replace("metadata: {name: teacher}", "metadata: x")), "metadata"),
    "metadata null": (lambda t: pipeline(t, GOOD.replace("metadata: {name: teacher}", "metadata:")), "metadata"),
    "metadata a list": (lambda t: pipeline(t, GOOD.replace("metadata: {name: teacher}", "metadata: [a]")), "metadata"),
    "not UTF-8": (lambda t: pipeline(t, GOOD.encode() + b"# \xff\xfe\n"), "not UTF-8"),
    "a directory": (lambda t: ["run", str(t), "--state-dir", str(t / "state")], "is a directory"),
    "an endless file": (lambda t: ["run", "/dev/zero", "--state-dir", str(t / "state")], "not a pipeline file"),
    "state dir is a file": (
        lambda t: [*pipeline(t, GOOD)[:2], "--state-dir", str(t / "pipeline.yaml")],
        "is not a directory",
    ),
    "corrupt state (run)": (lambda t: corrupt_state(t, "run"), "delete it to start over"),
    "corrupt state (status)": (lambda t: corrupt_state(t, "status"), "delete it to start over"),
    "corrupt state (stop)": (lambda t: corrupt_state(t, "stop"), "delete it to start over"),
    "recursive alias": (lambda t: pipeline(t, GOOD + "  pod: &p {affinity: *p}\n"), "cycle"),
    "billion laughs": (
        lambda t: pipeline(
            t, GOOD + "  pod:\n    affinity:\n" + "".join("      " + line + "\n" for line in LAUGHS.splitlines())
        ),
        "expand beyond",
    ),
    "duplicate keys": (
        lambda t: pipeline(t, GOOD + "  engine: vllm\n  engine: transformers\n"),
        "duplicate key 'engine'",
    ),
    "invalid bucket": (lambda t: pipeline(t, GOOD.replace("s3://bkt/teacher", "s3://a..b/teacher")), "bucket"),
    "bucket an IP address": (lambda t: pipeline(t, GOOD.replace("s3://bkt/model", "s3://10.0.0.1/m")), "bucket"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_clear_message_instead_of_a_traceback(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args, expected = CASES[case]
    try:
        code = main(args(tmp_path))
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code not in (0, None) and expected in err, err
    assert "Traceback" not in err


def test_user_text_is_never_rich_markup():
    console = Console(file=open("/dev/null", "w"), force_terminal=True)  # noqa: SIM115
    display = LiveDisplay(console)
    display.say("state dir /tmp/[/x] failed: [bold]unterminated [/nope]")
    state = State()
    rs = state.resource("TrainingRun", "r")
    rs.status = {"phase": "Failed", "message": "[/x] closes nothing"}
    console.print(render_table(state))
    reporter = RichReporter()  # the trainer's terminal progress: its events name checkpoint URIs
    reporter.progress.console.file = console.file
    reporter.on_event("resumed from s3://b/[/x]/checkpoints/step-2", {})


def test_only_uri_fields_name_buckets():
    body = TeacherGeneration.model_validate(
        {"metadata": {"name": "t"}, **__import__("yaml").safe_load(GOOD), "kind": "TeacherGeneration"}
    ).spec.dump()
    body["sampling"]["stop"] = ["s3://", "s3://x y"]
    assert sorted(s3_uris(body)) == ["s3://bkt/model", "s3://bkt/teacher"]


def test_a_download_that_keeps_breaking_is_a_clear_transient_error():
    from boto3.exceptions import RetriesExceededError

    with pytest.raises(Unreachable, match="damaged in the store"), _translate(Uri.parse("s3://bkt/k"), "http://s3"):
        raise RetriesExceededError(ConnectionResetError("reset"))
