"""Every command that the README, docs/ and the scripts' --help give runs as written, in the order shown.

Each `python SCRIPT ...` (or `torchrun ... SCRIPT ...`) in README.md, docs/*.md and the scripts'
docstrings (their --help) is run up to the point where its arguments are parsed, then stopped: no data
is read and nothing is trained. Then the files they pass are followed, in the order shown: a data
folder or checkpoint under data/ or checkpoints/ that a command reads must be written by a command
shown before it, in the same document (the docstrings count as one, read in the order the data flows;
docs/ is read after the README, and may use what the README's commands wrote), and still be what that
command left: no checkpoint written by two commands, no data folder prepared again under a checkpoint
trained on it, an ensemble's checkpoints trained on the same data and folds, no --resume of a
--dry-run's checkpoint. Commands meant for an older commit (after `git checkout`) are left out. The quick start itself runs end to end in
test_cli.py::test_whole_pipeline_from_the_command_line.
"""
import argparse
import itertools
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
CLOCK = itertools.count()  # the order in which files are written
COMMAND = re.compile(r"(?:\bpython|\btorchrun)\s+(?:--\S+\s+)*((?:benchmarks/)?[a-z_0-9]+\.py)([^`#&|\n]*)")


def commands_in(name, text):
    """(document, script, arguments) for every command a text gives, in order; `python model.py` takes no
    arguments to parse, and is left out."""
    found = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():  # a command continued on the next line
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


def norm(path):
    """A path of the project's own (under data/ or checkpoints/, the default outputs), normalised; None for
    anything else (../shared/data, a user's lesion.jpg: the user's)."""
    path = os.path.normpath(str(path))
    return path if path.split(os.sep)[0] in ("data", "checkpoints") else None


def follow(commands, state, monkeypatch):
    """Run the commands' file traffic in order on `state` ({path: what wrote it}); each problem found: a path
    read before any command wrote it, or read after another command wrote over it, so that the reader finds
    something else than what the command that wrote it left; a checkpoint written by two commands."""
    problems, written_here = [], {}
    for _, script, arguments in commands:
        args = parse(script, arguments, monkeypatch)
        command = f"{script} {' '.join(arguments)}"

        def wrote(path, **what):
            if path is None:
                return
            if path in written_here and written_here[path] != command and path.startswith("checkpoints"):
                problems.append(f"{command}: writes over {path}, which `{written_here[path]}` wrote")
            written_here[path] = command
            state[path] = {"command": command, "order": next(CLOCK), **what}

        def reads(path):
            if path is None:
                return None
            found = state.get(path) or next((v for k, v in state.items() if path.startswith(k + os.sep)), None)
            if found is None:
                problems.append(f"{command}: reads {path} before any command writes it")
            return found

        if script == "prepare_data.py":
            wrote(norm(args.out))
        elif script == "dataset.py":
            reads(norm(args.data))
        elif script == "train.py" and args.resume:
            run = reads(norm(args.resume))
            if run and run.get("dry_run"):
                problems.append(f"{command}: {args.resume} is a --dry-run's (`{run['command']}`), not a run to resume")
        elif script == "train.py":
            data = norm(args.data)
            reads(data)
            wrote(norm(args.out or f"checkpoints/{args.model}.pt"), data=data, folds=args.folds,
                  dry_run=args.dry_run, data_written=state.get(data, {}).get("order"))
        elif script == "evaluate.py":
            runs = [(path, reads(norm(path))) for path in args.checkpoints]
            for path, run in runs:  # the data a checkpoint is scored on by default is the one it trained on
                if run and run.get("data") and state.get(run["data"], {}).get("order") != run["data_written"]:
                    problems.append(f"{command}: {run['data']} was prepared again after {path} trained on it")
            trained = {(run.get("data"), run.get("folds")) for _, run in runs if run}
            if len(trained) > 1:  # evaluate.py chooses an ensemble's threshold on the images all validated on
                problems.append(f"{command}: its checkpoints were trained on other data or folds: {sorted(trained)}")
            for path in (args.data, args.threshold_from):
                reads(norm(path) if path else None)
    return problems


@pytest.mark.parametrize("document", list(documents()))
def test_each_command_finds_what_the_command_that_wrote_it_left(document, monkeypatch):
    state = {}
    if document.endswith(".md") and document != "README.md":
        follow(documents()["README.md"], state, monkeypatch)  # what a reader of docs/ has already run
    problems = follow(documents()[document], state, monkeypatch)
    assert not problems, f"{document}: " + "; ".join(problems)
