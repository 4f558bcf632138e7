"""Numbers on the command line are checked where they are parsed: a bad one ends the script at once with
exit code 2 and one line on stderr naming the option, never a traceback from deep inside."""
import pytest

import evaluate
import prepare_data
import train
from conftest import run_main, run_script

# The option(s) each message must name, and the command line. The data folder and checkpoint named here do
# not exist: were a number let through, the script would fail later, on them, with another message.
BAD_NUMBERS = [
    (train, ["--epochs"], ["--epochs", "0"]),
    (train, ["--batch-size"], ["--batch-size", "0"]),
    (train, ["--img-size"], ["--img-size", "4"]),
    (train, ["--lr"], ["--lr", "0"]),
    (train, ["--lr"], ["--lr", "-1"]),
    (train, ["--patience"], ["--patience", "-1"]),
    (train, ["--neg-per-pos"], ["--neg-per-pos", "0"]),
    (train, ["--weight-decay"], ["--weight-decay", "-1"]),
    (train, ["--folds"], ["--folds", "0"]),
    (evaluate, ["--batch-size"], ["absent.pt", "--batch-size", "0"]),
    (evaluate, ["--target-sensitivity"], ["absent.pt", "--target-sensitivity", "1.5"]),
    (evaluate, ["--prevalence"], ["absent.pt", "--prevalence", "1"]),  # a share strictly below 1
    (train, ["--unlike-share"], ["--unlike-share", "0.5"]),
    (prepare_data, ["--val-fraction"], ["--val-fraction", "1.2"]),
    (prepare_data, ["--test-fraction"], ["--test-fraction", "0"]),
    (prepare_data, ["--val-fraction", "--test-fraction"], ["--val-fraction", "0.5", "--test-fraction", "0.5"]),
    (prepare_data, ["--max-images"], ["--max-images", "0"]),
    (prepare_data, ["--synthetic-size"], ["--synthetic-size", "4"]),
]


@pytest.mark.parametrize("script, options, argv", BAD_NUMBERS, ids=[" ".join(argv) for _, _, argv in BAD_NUMBERS])
def test_a_bad_number_is_refused_in_one_line(script, options, argv, tmp_path, monkeypatch, capsys):
    where = {train: ["--data", tmp_path / "absent", "--out", tmp_path / "x.pt"], evaluate: ["--out", tmp_path / "r"],
             prepare_data: ["--source", "synthetic", "--out", tmp_path / "data"]}[script]
    assert run_main(script, *argv, *where, monkeypatch=monkeypatch) == 2
    captured = capsys.readouterr()
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err  # exactly one line
    assert all(option in captured.err for option in options), captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "data").exists()  # refused before any work


def test_a_bad_number_in_a_real_process(tmp_path):
    # The same, as a user sees it: a separate process, whose stderr would show any uncaught exception.
    step = run_script("train.py", "--data", tmp_path / "absent", "--img-size", "4")
    assert step.returncode == 2
    assert step.stderr.count("\n") == 1 and "--img-size" in step.stderr and "Traceback" not in step.stderr


@pytest.mark.parametrize("script", [prepare_data, train, evaluate], ids=lambda module: module.__name__)
def test_help_gives_each_option_its_default(script, monkeypatch, capsys):
    # Every option says what it does, and every option with a value says what that value is when not given.
    parsers = []
    real_init = script.Parser.__init__
    monkeypatch.setattr(script.Parser, "__init__", lambda self, doc: parsers.append(self) or real_init(self, doc))
    assert run_main(script, "--help", monkeypatch=monkeypatch) == 0
    text = " ".join(capsys.readouterr().out.split())  # the help, its lines joined
    for action in parsers[0]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings[0]} has no help"
            if action.default not in (None, False):
                assert "default" in " ".join(parsers[0]._get_formatter()._get_help_string(action).split()), \
                    action.option_strings[0]
    assert "(default: 15)" in text or script is not train
