"""A progress bar for long runs: tqdm, on a terminal only.

``progress_bar(total, desc, quiet)`` is a context manager that yields the callback
``bpcheck.compare.run(..., progress=...)`` calls after each step. The bar shows the
steps done, the rate and the estimated time left. It stays silent:

- when stdout is not a TTY (a pipe, a file, CI logs) or under ``--quiet``: no bar at all;
- for runs shorter than ``DELAY`` seconds: tqdm's ``delay`` holds the bar back until then.

The bar is drawn on stdout (the stream whose TTY-ness decides) and erased when the
run ends (``leave=False``), so that only the summary stays on the screen.
"""
import contextlib
import sys

DELAY = 2.0  # seconds before a bar appears


@contextlib.contextmanager
def progress_bar(total, desc=None, quiet=False, stream=None, delay=None, **tqdm_options):
    stream = sys.stdout if stream is None else stream
    delay = DELAY if delay is None else delay
    if quiet or not _isatty(stream):
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", file=stream, leave=False, delay=delay, dynamic_ncols=True,
               **tqdm_options)
    try:
        yield lambda step: bar.update(step - bar.n)
    finally:
        bar.close()


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
