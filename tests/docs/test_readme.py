"""README.md names only what exists: `make` targets, `medmoelora` subcommands and their flags, the flags of
lm_eval, accelerate and snakemake command lines, `python -m medmoelora_eval.*` modules, and task names."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from medmoelora.cli import build_parser
from medmoelora.tasks import EVAL_TASKS, MMLU_SUBJECT_TASK_PREFIX, MMLU_SUBJECTS, mmlu_subject_task

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]


def code_snippets(text: str) -> list[str]:
    """Shell-like code of a markdown text: indented blocks, non-Python fences, inline spans; one command a
    snippet, backslash continuations joined."""
    snippets: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else (line[3:].strip() or "text")
            continue
        if fence is not None:
            if fence != "python":
                snippets.append(line)
        elif line.startswith("    "):
            snippets.append(line.strip())
        else:
            snippets += re.findall(r"`([^`]+)`", line)
    joined = "\n".join(snippets).replace("\\\n", " ")
    return [snippet for snippet in joined.splitlines() if snippet.strip()]


def commands(snippet: str) -> list[list[str]]:
    """The words of each command in a snippet (split at ;, &&, |, and cut at a # comment)."""
    snippet = re.sub(r"\s#.*$", "", snippet)
    try:
        words = shlex.split(snippet, posix=True)
    except ValueError:  # an unbalanced quote inside prose code: fall back to whitespace
        words = snippet.split()
    found, current = [], []
    for word in words:
        if word in (";", "&&", "|", "||"):
            found.append(current)
            current = []
        else:
            current.append(word)
    return [*found, current]


def flags(words: list[str]) -> list[str]:
    """The option names among ``words``: ``--set`` of ``--set key=value``, ``--out`` of ``--out/.train.lock``."""
    return [match.group(0) for word in words if (match := re.match(r"--[A-Za-z0-9][A-Za-z0-9_-]*", word))]


def options(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)  # argparse has no public listing


@cache
def medmoelora_subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@cache
def lm_eval_flags() -> set[str]:
    from lm_eval._cli import HarnessCLI

    return options(HarnessCLI()._subparsers.choices["run"])


@cache
def accelerate_flags() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return options(launch_command_parser())


@cache
def snakemake_flags() -> set[str]:
    from snakemake.cli import get_argument_parser

    return options(get_argument_parser())


def make_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_-]+):", makefile, re.M))


def every_flag() -> set[str]:
    subcommands = {flag for parser in medmoelora_subcommands().values() for flag in options(parser)}
    return subcommands | lm_eval_flags() | accelerate_flags() | snakemake_flags()


def check_command(words: list[str]) -> list[str]:
    """What in one command does not exist (an empty list: all of it does)."""
    tool = Path(words[0]).name if words[0].startswith((".venv/bin/", "$(BIN)/")) else words[0]
    if tool == "make":
        return [f"make target {target}" for target in words[1:2] if target not in make_targets()]
    if tool == "medmoelora" or words[:2] == ["-m", "medmoelora.cli"]:
        rest = words[1:] if tool == "medmoelora" else words[2:]
        subcommands = medmoelora_subcommands()
        if not rest or rest[0].startswith("-"):
            return []
        if rest[0] not in subcommands:
            return [f"medmoelora subcommand {rest[0]}"]
        known = options(subcommands[rest[0]])
        return [f"medmoelora {rest[0]} {flag}" for flag in flags(rest[1:]) if flag not in known]
    if tool == "lm_eval" or words[:2] == ["-m", "lm_eval"]:
        return [f"lm_eval {flag}" for flag in flags(words) if flag not in lm_eval_flags()]
    if tool == "snakemake":
        return [f"snakemake {flag}" for flag in flags(words) if flag not in snakemake_flags()]
    if words[:2] == ["accelerate", "launch"]:
        target = words.index("-m") if "-m" in words else len(words)
        missing = [f"accelerate launch {flag}" for flag in flags(words[2:target]) if flag not in accelerate_flags()]
        return missing + (check_command(words[target:]) if target < len(words) else [])
    if words[:2] == ["python", "-m"] and words[2].startswith("medmoelora_eval."):
        return check_eval_module(words[2], words[3:])
    if tool.startswith("--"):  # a flag named on its own in the text
        return [f"flag {flag}" for flag in flags(words) if flag not in every_flag()]
    return []


def check_eval_module(module: str, rest: list[str]) -> list[str]:
    try:
        main = importlib.import_module(module).main
    except (ImportError, AttributeError):
        return [f"python -m {module}"]
    if not flags(rest):
        return []
    command = [rest[0]] if rest and not rest[0].startswith("-") else []
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        main([*command, "--help"])
    return [f"python -m {module} {flag}" for flag in flags(rest) if f"{flag} " not in help_text.getvalue() + " "]


def named_commands(path: Path) -> list[list[str]]:
    snippets = code_snippets(path.read_text(encoding="utf-8"))
    return [words for snippet in snippets for words in commands(snippet) if words]


def test_readme_names_the_commands_this_suite_documents() -> None:
    """The parser sees the README's commands (a guard against a parser that silently finds nothing)."""
    tools = {(words[0], words[1] if len(words) > 1 else "") for words in named_commands(README)}
    for expected in [("make", "test"), ("make", "table1"), (".venv/bin/medmoelora", "train"), ("lm_eval", "--model")]:
        assert expected in tools, expected
    assert {flag for words in named_commands(README) for flag in flags(words)} >= {"--set", "--resume", "--samples"}


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_named_target_subcommand_and_flag_exists(path: Path) -> None:
    missing = [problem for words in named_commands(path) for problem in check_command(words)]
    assert missing == [], f"{path.name} names what does not exist: {missing}"


def test_a_wrong_name_is_caught() -> None:
    """The checks above can fail."""
    assert check_command(["make", "tabel1"]) == ["make target tabel1"]
    assert check_command(["medmoelora", "prepare-data", "--raw-dri", "x"]) == ["medmoelora prepare-data --raw-dri"]
    assert check_command(["medmoelora", "materialise-model"]) == ["medmoelora subcommand materialise-model"]
    assert check_command(["lm_eval", "--model", "hf", "--task", "x"]) == ["lm_eval --task"]
    assert check_command(["--resum"]) == ["flag --resum"]


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_task_name_in_the_docs_is_in_the_registry(path: Path) -> None:
    known = {task.lm_eval_task for task in EVAL_TASKS.values()} | {mmlu_subject_task(s) for s in MMLU_SUBJECTS}
    known.add(MMLU_SUBJECT_TASK_PREFIX)  # "medmoe_mmlu_<subject>"
    named = set(re.findall(r"medmoe_[a-z0-9_]+", path.read_text(encoding="utf-8")))
    assert named <= known, named - known
