"""README.md against the code, quickly (scripts/check-readme runs its commands for real, in CI):
every command it shows parses with the CLI, every route and setting is documented, the set-up
is exactly the two commands, and CI runs the README."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest
import typer.main

from service.cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
_loader = SourceFileLoader("check_readme", str(ROOT / "scripts" / "check-readme"))
check = module_from_spec(spec_from_loader("check_readme", _loader))
sys.modules["check_readme"] = check  # dataclasses look their module up there
_loader.exec_module(check)
BLOCKS = check.parse_readme(ROOT / "README.md")


def logical_lines(text: str) -> list[str]:
    return [ln for ln in text.replace("\\\n", " ").splitlines() if ln.strip()]


def _without_substitutions(line: str) -> str:
    """`line` with each $(…) (parentheses balanced) as one word: to the command around it a
    substitution is one argument (`predict 1 $(ls -d … | head -3)`)."""
    out, i = [], 0
    while (start := line.find("$(", i)) >= 0:
        depth, j = 0, start + 1
        while j < len(line):
            depth += {"(": 1, ")": -1}.get(line[j], 0)
            if depth == 0:
                break
            j += 1
        out += [line[i:start], "SUBSTITUTED"]
        i = j + 1
    return "".join(out) + line[i:]


def camloop_invocations(text: str) -> list[list[str]]:
    """Argument lists of every `camloop …` in a block, $(…) substitutions included."""
    out = []
    for line in logical_lines(text):
        for sub in re.findall(r"\$\(([^)]*camloop[^)]*)\)", line):
            out += camloop_invocations(sub)
        lex = shlex.shlex(_without_substitutions(line), posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, "#"
        tokens = list(lex)
        for i, tok in enumerate(tokens):
            if tok in ("camloop", ".venv/bin/camloop") or tok.endswith("/camloop") and tok.startswith(".venv"):
                args = []
                for t in tokens[i + 1:]:
                    if t in ("&", "&&", "|", "||", ";", ">", ">>", "<", "2>&1") or re.fullmatch(r"\d?>&?\d?", t):
                        break
                    args.append(t)
                out.append(args)
    return out


def test_every_camloop_command_in_the_readme_parses_with_the_cli():
    cli = typer.main.get_command(app)
    seen = set()
    for b in BLOCKS:
        for args in camloop_invocations(b.text):
            cmd = cli
            path = []
            while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
                path.append(args[0])
                cmd = cmd.commands[args.pop(0)]
            assert path and not hasattr(cmd, "commands"), f"README.md:{b.line}: not a camloop command: {path} {args}"
            cmd.make_context(" ".join(path), list(args))  # raises on an unknown option or a bad value
            seen.add(" ".join(path))
    assert {"demo", "serve", "project create", "round start", "status", "simulate", "queues"} <= seen


def test_every_block_is_valid_bash():
    for b in BLOCKS:
        r = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True)
        assert r.returncode == 0, f"README.md:{b.line}: {r.stderr}"


def test_set_up_is_exactly_the_two_commands_and_ci_runs_the_readme():
    first = BLOCKS[0]
    commands = [ln.split("#")[0].strip() for ln in logical_lines(first.text)]
    assert commands == ["./scripts/demo", "./scripts/test"] and first.directive == ""
    assert README.index("## Set up and run") < README.index("```bash")
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec scripts/check-readme --here$", ci, re.M)
    # Every block runs in CI except the ones that say why not.
    for b in BLOCKS:
        assert b.directive != "skip" or b.reason, f"README.md:{b.line}: a skipped block must say why"
    assert sum(b.directive == "skip" for b in BLOCKS) <= 3


def test_every_route_is_in_the_api_table():
    from service.api import create_app

    spec = create_app(Settings(data_dir=ROOT / "camloop-data-unused")).openapi()
    for path, ops in spec["paths"].items():
        for method in ops:
            assert f"`{method.upper()} {path}`" in README, f"{method.upper()} {path} is not in the README"


def test_every_setting_and_project_config_key_is_documented():
    from engine.config import ProjectConfig

    config = README[README.index("## Configuration"):README.index("## Production")]
    for name, field in Settings.model_fields.items():
        env = list(field.validation_alias.choices)[0] if field.validation_alias else f"CAMLOOP_{name.upper()}"
        assert f"| `{env}` |" in config, f"{env} is not in the README's configuration table"
    for key in ProjectConfig.model_fields:
        assert f"`{key}`" in README, f"project config key {key} is not in the README"


def test_every_cli_command_is_in_the_command_table():
    cli = typer.main.get_command(app)
    table = README[README.index("## The command line"):README.index("## Configuration")]
    for name, cmd in cli.commands.items():
        subs = list(cmd.commands) if hasattr(cmd, "commands") else [None]
        for sub in subs:
            full = name if sub is None else f"{name} {sub}"
            assert f"| `camloop {full}" in table, f"camloop {full} is not in the README's command table"


@pytest.mark.parametrize("text, expected", [
    ("./x && .venv/bin/camloop demo --rounds 2 > log 2>&1 &", [["demo", "--rounds", "2"]]),
    ('rq info --url "$(.venv/bin/camloop queues --url-only)"', [["queues", "--url-only"]]),
    ("camloop round start 1 --wait   # comment --nope", [["round", "start", "1", "--wait"]]),
])
def test_the_invocation_parser_itself(text, expected):
    assert camloop_invocations(text) == expected


def test_the_readme_expert_answers_only_while_an_expert_block_runs(tmp_path):
    """The test suite (itself a README block) runs demos against its own Label Studio and labels
    them in a browser; the check's expert answering them too broke those tests in CI."""
    status = tmp_path / "status"
    expert = check.Expert("run", status, {2})
    assert not expert._in_expert_block()  # nothing started yet
    status.write_text("start 0 1.0\nend 0 2.0\nstart 1 3.0\n")
    assert not expert._in_expert_block()  # block 1: the test suite
    status.write_text(status.read_text() + "end 1 4.0\nstart 2 5.0\n")
    assert expert._in_expert_block()      # block 2: the README's Label Studio demo
    status.write_text(status.read_text() + "end 2 6.0\n")
    assert not expert._in_expert_block()
