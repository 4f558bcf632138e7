"""Every command that the README, docs/, the scripts' --help and the chapters give runs as written, in the
order shown.

Each `python SCRIPT ...` (or `torchrun ... SCRIPT ...`) in README.md, docs/*.md, the scripts' docstrings
(their --help) and the chapters' docstrings is run up to the point where its arguments are parsed, then
stopped: no data is read and nothing is trained. Then the files they pass are followed, in the order shown,
as if each document's commands ran top to bottom in one fresh folder: a data folder, checkpoint or report
under data/, checkpoints/ or reports/ that a command reads must be written by a command shown before it in
the same document (the scripts' docstrings count as one, read in the order the data flows; docs/ is read
after the README and may use what the README's commands wrote; each chapter is read after the scripts'
docstrings), and still be what that command left: no file written by two commands of one document (a data
folder, a checkpoint, a report's metrics.json, a Grad-CAM picture, a submission, an ONNX file), no data
folder prepared again under a checkpoint trained on it, an ensemble's checkpoints trained on the same data
and folds, and no --resume of a checkpoint that a command shown runs to its end. Commands meant for an older
commit (after `git checkout`) are left out. The quick start itself runs end to end in
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
CHAPTERS = sorted((ROOT / "chapters").glob("[a-z]*.py"))
# The scripts whose --help gives commands with options, in the order data flows (model.py's one example,
# `python model.py`, takes none).
SCRIPTS = ["prepare_data.py", "dataset.py", "train.py", "evaluate.py"]
CLOCK = itertools.count()  # the order in which files are written
COMMAND = re.compile(r"(?:\bpython|\btorchrun)\s+(?:--\S+\s+)*((?:benchmarks/|starts/)?[a-z_0-9]+\.py)([^`#&|\n]*)")


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
    if '"""' not in source:
        return ""
    return source[source.index('"""') + 3:source.index('"""', source.index('"""') + 3)]


def documents():
    """{document: its commands, in order}: each Markdown file, and the scripts' docstrings as one."""
    found = {path.name: commands_in(path.name, path.read_text()) for path in DOCUMENTS}
    found["the scripts' --help"] = [command for script in SCRIPTS
                                    for command in commands_in(f"{script} --help", docstring(script))]
    for chapter in CHAPTERS:
        found[f"chapters/{chapter.name}"] = commands_in(chapter.name, docstring(chapter))
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
    assert {"prepare_data.py", "train.py", "evaluate.py", "benchmarks/quality.py", "benchmarks/speed.py",
            "starts/make_skin_start.py"} <= scripts


@pytest.mark.parametrize("script, arguments", documented_commands())
def test_a_documented_command_parses(script, arguments, monkeypatch):
    parse(script, arguments, monkeypatch)


def norm(path):
    """A path of the project's own (under data/, checkpoints/ or reports/, the default outputs), normalised;
    None for anything else (../shared/data, a user's lesion.jpg: the user's)."""
    path = os.path.normpath(str(path))
    return path if path.split(os.sep)[0] in ("data", "checkpoints", "reports") else None


def outputs_of_evaluate(args):
    """What an evaluate.py command writes: its report's files in OUT (default reports/<checkpoint name>), or
    the ONNX file."""
    if args.export:
        return [os.path.normpath(args.export)]
    out = args.out or os.path.join("reports", os.path.splitext(os.path.basename(args.checkpoints[0]))[0])
    if args.image:
        return [norm(os.path.join(out, f"grad_cam_{os.path.splitext(os.path.basename(args.image))[0]}.png"))]
    return [norm(os.path.join(out, "submission.csv" if args.predict else "metrics.json"))]


def follow(commands, state, monkeypatch):
    """Run the commands' file traffic in order on `state` ({path: what wrote it}); each problem found: a path
    read before any command wrote it, or read after another command wrote over it, so that the reader finds
    something else than what the command that wrote it left; a file written by two commands; a run resumed
    that a command shown finished."""
    problems, written_here = [], {}
    for _, script, arguments in commands:
        args = parse(script, arguments, monkeypatch)
        command = f"{script} {' '.join(arguments)}"

        def wrote(path, **what):
            if path is None:
                return
            if path in written_here and written_here[path] != command:
                problems.append(f"{command}: writes over {path}, which `{written_here[path]}` wrote")
            written_here[path] = command
            state[path] = {"command": command, "order": next(CLOCK), **what}

        def reads(path):
            if path is None:
                return None
            found = state.get(path)  # a folder inside another command's is not that command's
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
            elif run:
                problems.append(f"{command}: `{run['command']}` runs to its end: nothing left to resume")
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
            for path in outputs_of_evaluate(args):
                wrote(path)
    return problems


def problems_of(document, monkeypatch):
    """What following one document's commands finds wrong (docs/ after the README, a chapter after the
    scripts' --help)."""
    state = {}
    if document.endswith(".md") and document != "README.md":
        follow(documents()["README.md"], state, monkeypatch)  # what a reader of docs/ has already run
    if document.startswith("chapters/"):
        follow(documents()["the scripts' --help"], state, monkeypatch)
    return follow(documents()[document], state, monkeypatch)


@pytest.mark.parametrize("document", list(documents()))
def test_each_command_finds_what_the_command_that_wrote_it_left(document, monkeypatch):
    problems = problems_of(document, monkeypatch)
    assert not problems, f"{document}: " + "; ".join(problems)


# The collisions the documents once had, each named: each example must write files of its own.

def test_prepare_data_help_examples_each_write_a_folder_of_their_own(monkeypatch):
    problems = [p for p in problems_of("the scripts' --help", monkeypatch) if p.startswith("prepare_data.py")]
    assert not problems, problems


def test_evaluate_help_image_examples_write_distinct_pictures(monkeypatch):
    problems = [p for p in problems_of("the scripts' --help", monkeypatch) + problems_of("chapters/unlabelled.py",
                                                                                        monkeypatch)
                if "grad_cam_" in p]
    assert not problems, problems


def test_no_document_resumes_a_run_it_ran_to_its_end(monkeypatch):
    problems = [p for document in documents() for p in problems_of(document, monkeypatch)
                if "nothing left to resume" in p]
    assert not problems, problems


def test_the_readme_prepares_each_data_folder_once(monkeypatch):
    problems = [p for p in problems_of("README.md", monkeypatch) if "writes over data" in p]
    assert not problems, problems


def test_the_reports_are_followed_too(monkeypatch):
    """A report written by two commands of one document is a collision; so is a report read before it
    is written."""
    commands = [("doc", "evaluate.py", ["checkpoints/a.pt", "--out", "reports/r"]),
                ("doc", "evaluate.py", ["checkpoints/a.pt", "--out", "reports/r", "--split", "val"])]
    state = {"checkpoints/a.pt": {"command": "train.py", "order": next(CLOCK)}}
    assert follow(commands, state, monkeypatch) == [
        f"evaluate.py checkpoints/a.pt --out reports/r --split val: writes over {os.path.join('reports', 'r', 'metrics.json')}, "
        "which `evaluate.py checkpoints/a.pt --out reports/r` wrote"]
