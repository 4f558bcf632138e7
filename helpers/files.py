"""File plumbing and command-line checks shared by the five scripts; a first reading can skip it.

- DataError: input the pipeline cannot use, with a message that names the file and the fix;
- save_atomically: every output is written to a temporary name, then renamed into place;
- Progress: a progress line for anything that takes more than a few seconds;
- in_threads: a list of file jobs, run in threads, with a progress line;
- report_skipped: one line naming the rows that were left out;
- leads_outside: whether a path from a data file escapes its folder ('../../etc/passwd');
- Parser, number, stop: argparse that checks numbers where they are parsed, and bad input answered
  with one line and exit code 2.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class DataError(Exception):
    """Input the pipeline cannot use. The message names the file and what to do about it."""

    def __init__(self, message):
        # Raised in a DataLoader worker process, it is raised again in the main one with the worker's
        # traceback as its message; keep only its own words, the traceback's last line.
        if message.startswith("Caught DataError in DataLoader worker"):
            message = message.rstrip().rsplit("DataError: ", 1)[-1]
        super().__init__(message)


def save_atomically(path, write):
    """Call write(temporary path), then rename it to `path`. The rename is atomic, so a crash, Ctrl-C or
    full disk leaves either the previous file or the new one, never half a file; a write that fails (or is
    interrupted) leaves no temporary file behind either. Every output goes here."""
    tmp = f"{path}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C too
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_image(image, path):
    save_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def leads_outside(path, root):
    """Whether the path, its '..' resolved, lies outside the folder root: a file a CSV must not reach."""
    return not Path(os.path.normpath(path)).is_relative_to(os.path.normpath(root))


class Progress:
    """A progress line for work that takes more than a few seconds: redrawn in place on a terminal,
    printed as a new line every 30 s when the output goes to a log file."""

    def __init__(self, what, total):
        self.what, self.total = what, total
        self.started = self.last = time.time()
        self.interactive = sys.stdout.isatty()

    def update(self, done, detail=""):
        now = time.time()
        if now - self.started < 3 or now - self.last < (1 if self.interactive else 30):
            return
        self.last = now
        line = f"  {self.what} {done}/{self.total} images, {done / (now - self.started):.0f} images/s"
        line += f", {detail}" if detail else ""
        print("\r" + line if self.interactive else line, end="" if self.interactive else "\n", flush=True)

    def close(self):
        if self.interactive and self.last > self.started:
            print("\r\033[K", end="", flush=True)  # erase the line, so the next print starts clean


def in_threads(work, items, what, threads, block=256):
    """[work(item) for item in items], in threads, with a progress line. Items go in blocks, so that
    400,000 of them make a few thousand tasks, not 400,000 (each a few kB of memory); Ctrl-C cancels the
    blocks not yet started instead of waiting for them all."""
    blocks = [items[start:start + block] for start in range(0, len(items), block)]
    results, progress = [], Progress(what, len(items))
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        for done in pool.map(lambda part: [work(item) for item in part], blocks):
            results += done
            progress.update(len(results))
    finally:
        pool.shutdown(cancel_futures=True)
    progress.close()
    return results


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """--help as the docstring is laid out, each option followed by its default unless its help names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:  # (0 is a default; False is a flag off)
            return text
        return f"{text} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """argparse, with the script's docstring as its help, and a mistake answered in one line, exit code 2."""

    def __init__(self, doc):
        super().__init__(description=doc, formatter_class=HelpWithDefaults)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind=float, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a number of this kind, at least `low` (above it, with low_open) and at most `high` (below
    it, with high_open)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") \
                from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if value != value or too_low or too_high:  # value != value: nan
            wanted = [f"above {low}" if low_open else f"at least {low}"] if low is not None else []
            wanted += [f"below {high}" if high_open else f"at most {high}"] if high is not None else []
            raise argparse.ArgumentTypeError(f"must be {' and '.join(wanted)}, not {text}")
        return value
    return parse


def report_skipped(what, ids):
    """One line for rows left out, with a few of their names: a user must hear of every row that is dropped."""
    if len(ids):
        examples = ", ".join(map(str, list(ids)[:5])) + (", ..." if len(ids) > 5 else "")
        print(f"skipped {len(ids)} rows: {what}: {examples}")


def stop(error):
    """End the program as every script does on bad input: one line on stderr, exit code 2, no traceback."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)
