"""Every public module imports first in a fresh interpreter (no import cycle hidden by
the order in which the test suite happens to import things).

One child interpreter imports the third-party libraries once (torch, numpy, pandas:
they take seconds and cannot hide a cycle among bpcheck's modules), then forks once
per module, and each fork imports that one module first."""
import pkgutil
import subprocess
import sys

import bpcheck

CHILD = r"""
import os, sys, traceback
import numpy, pandas, torch, pyarrow  # noqa: F401
bad = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            print(name + ": " + traceback.format_exc().strip().splitlines()[-1], flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    bad += [name] if status else []
sys.exit(1 if bad else 0)
"""


def modules():
    names = ["bpcheck"] + [i.name for i in pkgutil.walk_packages(bpcheck.__path__, "bpcheck.")]
    for pkg in ("bpcheck.manual", "bpcheck.reference", "bpcheck.compare"):
        mod = __import__(pkg, fromlist=["_"])
        names += [pkg] + [i.name for i in pkgutil.walk_packages(mod.__path__, pkg + ".")]
    return sorted(set(names))


def test_each_module_imports_first_in_a_fresh_interpreter():
    names = modules()
    for name in ("bpcheck.reference.side", "bpcheck.compare.core.runner", "bpcheck.compare.io.writer"):
        assert name in names
    done = subprocess.run([sys.executable, "-c", CHILD, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
