"""Every command that the README and docs/ give runs as written: the script exists and takes its options.

Each `python SCRIPT ...` (or `torchrun ... SCRIPT ...`) in README.md and docs/*.md is run up to the point
where its arguments are parsed, then stopped: no data is read and nothing is trained. Commands meant for
an older commit (after `git checkout`) are left out. The quick start itself runs end to end in
test_cli.py::test_whole_pipeline_from_the_command_line.
"""
import argparse
import re
import runpy
import shlex
import sys

import pytest

from conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:\bpython|\btorchrun)\s+(?:--\S+\s+)*((?:benchmarks/)?[a-z_0-9]+\.py)([^`#&|\n]*)")


def documented_commands():
    """(document, script, arguments) for every command the documents give."""
    found = []
    for document in DOCUMENTS:
        for line in document.read_text().splitlines():
            if "git checkout" in line:
                continue
            for script, arguments in COMMAND.findall(line):
                if "..." not in arguments:
                    found.append(pytest.param(script, shlex.split(arguments), id=f"{document.name}: {script}"
                                              f"{arguments.rstrip()}"))
    return found


class Parsed(Exception):
    """Raised once the arguments parsed, to stop the script there."""


def test_the_documents_give_commands_for_each_step():
    scripts = {param.values[0] for param in documented_commands()}
    assert {"prepare_data.py", "train.py", "evaluate.py", "benchmarks/quality.py", "benchmarks/speed.py"} <= scripts


@pytest.mark.parametrize("script, arguments", documented_commands())
def test_a_documented_command_parses(script, arguments, monkeypatch):
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        real_parse_args(parser, args, namespace)  # a wrong option exits with code 2 here
        if args is None:  # the command line itself, not a parse of defaults
            raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    monkeypatch.syspath_prepend(str((ROOT / script).parent))
    with pytest.raises(Parsed):
        runpy.run_path(str(ROOT / script), run_name="__main__")
