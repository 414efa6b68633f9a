"""The ``bpcheck`` console script.

It imports the command (bpcheck.cli, which imports torch and pandas: a second or two)
inside ``main``, so that a Ctrl-C during that start-up is answered like any interrupt
before a run: one line, exit 130, nothing written, no traceback.
"""
import signal
import sys


def main(argv=None):
    try:
        from bpcheck.cli import main as command

        return command(argv)
    except KeyboardInterrupt:  # before bpcheck.cli's own handler was in place
        print("interrupted by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
