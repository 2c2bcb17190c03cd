"""What every ``lasc`` entry point shares: logging set-up, progress bars, error reporting.

Errors caused by input (:class:`~src_monai.errors.LascError`) become one ``error:`` line on
stderr and exit code 2; anything else is reported as an internal error with exit code 1.
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import TypeVar

from src_monai.errors import LascError
from src_monai.progress import Job

T = TypeVar("T")

EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


class LascArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors reported like every other error: one ``error:`` line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_INPUT_ERROR, f"error: {self.prog}: {message} (see --help)\n")


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Let a parser that raises :class:`LascError` serve as an argparse ``type``."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except LascError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from exc

    convert.__name__ = parse.__name__
    return convert


class _LevelFormatter(logging.Formatter):
    """Info lines as plain text, warnings and errors prefixed ``warning:``/``error:``."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log details and show tracebacks of errors"
    )


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged, not when the handler was
    made: a process that runs ``lasc`` in-process more than once (tests, notebooks) may have
    replaced and closed the earlier stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: bool) -> None:
    """Log to stderr; show Python warnings (orientation unknown, ...) as one-line warnings."""
    handler = _CurrentStderr()
    handler.setFormatter(_LevelFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("src_monai").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    warnings.formatwarning = lambda message, category, *_args, **_kw: (
        f"{message} [{category.__name__}]"
    )


def drive(job: Job[T], description: str, unit: str = "step") -> T:
    """Run a job to its end with a tqdm progress bar on stderr.

    Ctrl-C is handed to the job (``job.throw``), wherever it landed, so a job that stops
    cleanly on interruption (training saves and returns) gets to do so.
    """
    from tqdm import tqdm

    # Without a terminal (a log file, a batch job) tqdm draws nothing: plain lines instead.
    lines = None if sys.stderr.isatty() else PlainProgressLines(description, unit)
    with tqdm(
        desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=None
    ) as bar:
        pending: BaseException | None = None
        while True:
            try:
                progress = job.throw(pending) if pending is not None else next(job)
                pending = None
                bar.total = progress.total
                bar.set_postfix_str(progress.message)
                bar.update(progress.done - bar.n)
                if lines is not None:
                    lines.report(progress)
            except StopIteration as stop:
                return stop.value
            except KeyboardInterrupt as interrupt:
                if pending is not None:  # the job did not handle it: give up
                    raise
                pending = interrupt


class PlainProgressLines:
    """Progress as plain lines on stderr at a steady pace (the first report, then one every
    ``every_s`` seconds, and the last): done of total, rate, time left, the job's message."""

    def __init__(self, description: str, unit: str, every_s: float = 10.0) -> None:
        import time

        self.description, self.unit, self.every_s = description, unit, every_s
        self.clock = time.monotonic
        self.started = self.clock()
        self.last: float | None = None
        self.previous = (0.0, 0)

    def report(self, progress) -> None:
        now = self.clock()
        if self.previous[1] and (
            progress.total != self.previous[1] or progress.done < self.previous[0]
        ):
            self.started, self.last = now, None  # a new phase (a two-stage run's stage 2)
        first = self.last is None
        self.previous = (progress.done, progress.total)
        last_step = progress.total and progress.done >= progress.total
        if not first and now - self.last < self.every_s and not last_step:
            return
        self.last = now
        elapsed = now - self.started
        rate = progress.done / elapsed if elapsed > 0 else 0.0
        left = (progress.total - progress.done) / rate if rate > 0 else float("nan")
        share = 100 * progress.done / progress.total if progress.total else 0.0
        # No estimate from a phase's first report: its rate includes the start-up.
        eta = f", about {_duration(left)} left" if not (first or last_step) else ""
        pace = f", {rate:.3g} {self.unit}s/s" if rate > 0 else ""
        # A file part-way through shows as 0.2 of 1: two decimals say enough.
        done = f"{progress.done:g}" if float(progress.done).is_integer() else f"{progress.done:.2f}"
        print(
            f"{self.description}: {done}/{progress.total} {self.unit}"
            f"{'' if progress.total == 1 else 's'} ({share:.0f} %)"
            f"{pace}{eta}: {progress.message}",
            file=sys.stderr,
            flush=True,
        )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def report_errors(verbose: bool, run: Callable[[], int]) -> int:
    """Call ``run`` and turn exceptions into one-line messages and exit codes."""
    try:
        return run()
    except LascError as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        first_line = (str(exc).splitlines() or [""])[0]
        print(
            f"error: internal error: {type(exc).__name__}: {first_line} "
            "(run again with --verbose for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
