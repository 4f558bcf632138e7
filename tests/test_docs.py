"""Every command that the README, docs/ and the scripts' --help give runs as written, in the order shown.

Each `python SCRIPT ...` (or `torchrun ... SCRIPT ...`) in README.md, docs/*.md and the scripts'
docstrings (their --help) is run up to the point where its arguments are parsed, then stopped: no data
is read and nothing is trained. Then the files they pass are followed: a data folder or checkpoint
under data/ or checkpoints/ that a command reads must be written by a command shown before it, in the
same document (the docstrings count as one, read in the order the data flows; docs/ is read after
the README, and may use what the README's commands wrote). Commands meant for
an older commit (after `git checkout`) are left out. The quick start itself runs end to end in
test_cli.py::test_whole_pipeline_from_the_command_line.
"""
import argparse
import os
import re
import runpy
import shlex
import sys

import pytest

from conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The scripts whose --help gives commands with options, in the order data flows (model.py's one example,
# `python model.py`, takes none).
SCRIPTS = ["prepare_data.py", "dataset.py", "train.py", "evaluate.py"]
COMMAND = re.compile(r"(?:\bpython|\btorchrun)\s+(?:--\S+\s+)*((?:benchmarks/)?[a-z_0-9]+\.py)([^`#&|\n]*)")


def commands_in(name, text):
    """(document, script, arguments) for every command a text gives, in order; `python model.py` takes no
    arguments to parse, and is left out."""
    found = []
    for line in text.splitlines():
        if "git checkout" in line:
            continue
        for script, arguments in COMMAND.findall(line):
            if "..." not in arguments and script != "model.py":
                found.append((name, script, shlex.split(arguments)))
    return found


def docstring(script):
    source = (ROOT / script).read_text()
    return source[source.index('"""') + 3:source.index('"""', source.index('"""') + 3)]


def documents():
    """{document: its commands, in order}: each Markdown file, and the scripts' docstrings as one."""
    found = {path.name: commands_in(path.name, path.read_text()) for path in DOCUMENTS}
    found["the scripts' --help"] = [command for script in SCRIPTS
                                    for command in commands_in(f"{script} --help", docstring(script))]
    return found


def documented_commands():
    return [pytest.param(script, arguments, id=f"{name}: {script} {' '.join(arguments)}")
            for commands in documents().values() for name, script, arguments in commands]


class Parsed(Exception):
    """Raised once the arguments parsed, to stop the script there; holds them."""


def parse(script, arguments, monkeypatch):
    """The arguments a script parses from this command line (a wrong option exits with code 2)."""
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        parsed = real_parse_args(parser, args, namespace)
        if args is None:  # the command line itself, not a parse of defaults
            raise Parsed(parsed)
        return parsed

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        patch.setattr(sys, "argv", [script, *arguments])
        patch.syspath_prepend(str((ROOT / script).parent))
        with pytest.raises(Parsed) as parsed:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    return parsed.value.args[0]


def test_the_documents_give_commands_for_each_step():
    scripts = {param.values[0] for param in documented_commands()}
    assert {"prepare_data.py", "train.py", "evaluate.py", "benchmarks/quality.py", "benchmarks/speed.py"} <= scripts


@pytest.mark.parametrize("script, arguments", documented_commands())
def test_a_documented_command_parses(script, arguments, monkeypatch):
    parse(script, arguments, monkeypatch)


def files(script, args):
    """(the project's folders and checkpoints a command writes, those it reads): paths under data/ and
    checkpoints/, the default outputs. Anything else (../shared/data, a user's lesion.jpg) is the user's."""
    if script == "prepare_data.py":
        written, read = [args.out], []
    elif script == "dataset.py":
        written, read = [], [args.data]
    elif script == "train.py":
        written = [args.out or f"checkpoints/{args.model}.pt"]
        read = [args.resume] if args.resume else [args.data]  # a resumed run reads the data it was given
    elif script == "evaluate.py":
        written, read = [], [*args.checkpoints, *(path for path in (args.data, args.threshold_from) if path)]
    else:
        return [], []
    ours = [os.path.normpath(path) for path in map(str, written + read)]
    ours = [path if path.split(os.sep)[0] in ("data", "checkpoints") else None for path in ours]
    return ours[:len(written)], [path for path in ours[len(written):] if path]


def follow(commands, written, monkeypatch):
    """What these commands write, added to `written`, and each path one reads before any command wrote it."""
    missing = []
    for _, script, arguments in commands:
        makes, needs = files(script, parse(script, arguments, monkeypatch))
        missing += [f"{script} {' '.join(arguments)}: {path}" for path in needs
                    if path not in written and not any(path.startswith(folder + os.sep) for folder in written)]
        written.update(path for path in makes if path)
    return missing


@pytest.mark.parametrize("document", list(documents()))
def test_each_command_reads_what_a_command_before_it_wrote(document, monkeypatch):
    written = set()
    if document.endswith(".md") and document != "README.md":
        follow(documents()["README.md"], written, monkeypatch)  # what a reader of docs/ has already run
    missing = follow(documents()[document], written, monkeypatch)
    assert not missing, f"{document}: read before any command shown writes it: {missing}"
