"""The docs' examples stay true: every command line in README.md and docs/*.md that calls train.py,
evaluate.py or ``python -m oserve_rl`` parses with today's flags, and their Python examples run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from scriptload import load_script

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
PYTHONS = ("python", ".venv/bin/python", "python3")
# Scripts with an argparse ``build_parser()``: their documented command lines are checked too.
PARSED_SCRIPTS = tuple(f"scripts/{p.name}" for p in sorted((ROOT / "scripts").glob("*.py"))
                       if "def build_parser(" in p.read_text())


def _blocks(path: Path, langs: tuple[str, ...]) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang in langs]


def _commands() -> list[tuple[str, str, list[str]]]:
    """(where, program, argv) of each documented call of a CLI of this repository."""
    found = []
    for path in DOCS:
        for body in _blocks(path, ("", "bash", "sh", "console")):
            for line in re.sub(r"\\\n\s*", " ", body).splitlines():
                for part in re.split(r"&&|;|\|", line):
                    try:
                        tokens = shlex.split(part, comments=True)
                    except ValueError:
                        continue
                    # "..." and shell variables ($s in a loop) stand for values the reader fills in
                    if len(tokens) < 2 or tokens[0] not in PYTHONS or "..." in tokens or "$" in part:
                        continue
                    where = f"{path.relative_to(ROOT)}: {' '.join(tokens)[:90]}"
                    if tokens[1] in ("train.py", "evaluate.py") or tokens[1] in PARSED_SCRIPTS:
                        found.append((where, tokens[1], tokens[2:]))
                    elif tokens[1:3] == ["-m", "oserve_rl"]:
                        found.append((where, "oserve_rl", tokens[3:]))
    return found


def _parser(program: str):
    if program == "oserve_rl":
        from oserve_rl.__main__ import build_parser

        return build_parser()
    return load_script(ROOT / program, Path(program).stem + "_cli").build_parser()


COMMANDS = _commands()


def test_the_docs_have_commands_to_check():
    programs = {p for _, p, _ in COMMANDS}
    assert {"train.py", "evaluate.py", "oserve_rl", "scripts/reproduce_oserve.py"} <= programs and len(COMMANDS) > 30


@pytest.mark.parametrize("where,program,argv", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_documented_command_parses(where, program, argv, capsys):
    try:
        _parser(program).parse_args(argv)
    except SystemExit as e:
        if e.code != 0:
            pytest.fail(f"{where}\n{capsys.readouterr().err}")


# Examples that read what an earlier command in their page makes (a trained run, an exported policy, a model
# folder): the commands are checked above, these blocks are not run. A single such block says so in its first
# line, "# needs: ...".
NEEDS_ARTEFACTS = {"export.md": "an exported policy (python -m oserve_rl export ...)",
                   "live.md": "a local model folder (oserve_rl/live/tiny_model.py)"}
EXAMPLES = [(f"{path.name} example {i}", code) for path in DOCS if path.name not in NEEDS_ARTEFACTS
            for i, code in enumerate(_blocks(path, ("python",))) if not code.startswith("# needs:")]


def test_the_docs_have_examples_to_run():
    assert len(EXAMPLES) >= 10 and any(w.startswith("README.md") for w, _ in EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("where,code", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_python_example_runs(where, code):
    """Each in a fresh interpreter, from the repository root, as a reader would paste it."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, f"{where}:\n{res.stderr[-2000:]}"
