"""The numerics settings in force, on record with every report row, and a way to set them.

A **record** is a small dict of strings: what can change a float result without
changing a line of the case.

    torch          torch.__version__
    device         the device of the run: "cpu", "cuda:0"
    device_name    "CPU AVX512" (torch's CPU kernel capability, which picks the
                   vectorised kernels) or the GPU's name ("NVIDIA H100 80GB HBM3")
    threads        torch.get_num_threads(): CPU reductions split across threads
    deterministic  torch.use_deterministic_algorithms: on, off, or warn (warn_only)
    tf32_matmul    TF32 for float32 matmuls on CUDA, as in force: on or off
    tf32_conv      TF32 for float32 cuDNN convolutions, as in force: on or off
    fp32_precision the new API's raw values, matmul/conv/rnn/cuda/generic:
                   torch.backends.cuda.matmul.fp32_precision,
                   torch.backends.cudnn.conv/rnn.fp32_precision,
                   torch.backends.cudnn.fp32_precision (cuda, all ops),
                   torch.backends.fp32_precision (generic)
    allow_tf32     the legacy flags, matmul/cudnn: torch.backends.cuda.matmul.allow_tf32,
                   torch.backends.cudnn.allow_tf32; "?" where torch refuses to read them
                   (it raises once the new API has set a value the legacy flag
                   does not mirror: that is torch's rule, not an error here)

TF32 in force is read from the new API, which torch's kernels consult: the first
value other than "none" along op -> cuda (all ops) -> generic decides; "none" all
the way is IEEE float32. The legacy flags are recorded beside it, never used to
decide, and never set: ``numerics`` sets TF32 through the new API only, because
torch raises when the two APIs are mixed (torch before 2.9 has only the legacy
flags; there they are read and set instead, and fp32_precision reads "n/a").

Each record has an **id**: the first 8 hex digits of the SHA-1 of its canonical
text, so the same settings get the same id on every run and every machine.
Report rows carry the id in the ``settings`` column (two ids "a/b" on a row
that compares two configurations); the CSV writer puts the records themselves in
``<csv>.settings.json`` beside the CSV, and ``describe(id)`` prints one.
"""
import hashlib
import json
import os
from contextlib import contextmanager

import torch

from bpcheck.compare.core.errors import UsageError

# Every record taken in this process, by id. Content-addressed, so it never goes stale.
RECORDS = {}

TF32_CHOICES = ("on", "off")


# The new API's switches, public attributes (torch >= 2.9), by (backend, op).
NEW_API = {
    ("cuda", "matmul"): (torch.backends.cuda, "matmul"),
    ("cuda", "conv"): (torch.backends.cudnn, "conv"),
    ("cuda", "rnn"): (torch.backends.cudnn, "rnn"),
    ("cuda", "all"): (torch.backends, "cudnn"),
    ("generic", "all"): (torch, "backends"),
}
HAS_NEW_API = hasattr(torch.backends, "fp32_precision")


def _precision(backend, op):
    parent, name = NEW_API[(backend, op)]
    return getattr(getattr(parent, name), "fp32_precision") if HAS_NEW_API else "n/a"


def _in_force(op):
    """'on' when the first fp32_precision other than 'none' along op -> cuda -> generic is
    tf32; 'none' all the way is IEEE. Before torch 2.9 (no new API): the legacy flag."""
    if not HAS_NEW_API:
        return _legacy(lambda: torch.backends.cuda.matmul.allow_tf32 if op == "matmul" else torch.backends.cudnn.allow_tf32)
    for backend, o in (("cuda", op), ("cuda", "all"), ("generic", "all")):
        p = _precision(backend, o)
        if p != "none":
            return "on" if p == "tf32" else "off"
    return "off"


def _legacy(read):
    try:
        return "on" if read() else "off"
    except RuntimeError:  # torch refuses: the new API set a value this flag does not mirror
        return "?"


def device_name(device):
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {torch.backends.cpu.get_cpu_capability()}"


def current(device="cpu"):
    """The settings in force now, for a run on ``device``."""
    if torch.are_deterministic_algorithms_enabled():
        det = "warn" if torch.is_deterministic_algorithms_warn_only_enabled() else "on"
    else:
        det = "off"
    return {
        "torch": torch.__version__,
        "device": str(torch.device(device)),
        "device_name": device_name(device),
        "threads": str(torch.get_num_threads()),
        "deterministic": det,
        "tf32_matmul": _in_force("matmul"),
        "tf32_conv": _in_force("conv"),
        "fp32_precision": "/".join(_precision(*k) for k in (
            ("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"), ("cuda", "all"), ("generic", "all"))),
        "allow_tf32": "/".join((_legacy(lambda: torch.backends.cuda.matmul.allow_tf32),
                                _legacy(lambda: torch.backends.cudnn.allow_tf32))),
    }


def record_id(record):
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def take(device="cpu"):
    """Record the settings in force for a run on ``device``; return the record's id."""
    rec = current(device)
    rid = record_id(rec)
    RECORDS[rid] = rec
    return rid


def describe(rid):
    """One line: the record ``rid`` in words."""
    r = RECORDS[rid]
    return (f"settings {rid}: torch {r['torch']}, {r['device_name']} ({r['device']}), threads {r['threads']}, "
            f"deterministic {r['deterministic']}, TF32 matmul {r['tf32_matmul']} conv {r['tf32_conv']} "
            f"(fp32_precision {r['fp32_precision']}, legacy allow_tf32 {r['allow_tf32']})")


def ids_in(column):
    """The distinct record ids in a ``settings`` column ("a/b" cells hold two)."""
    out = []
    cells = column.unique() if hasattr(column, "unique") else column  # a report column: distinct cells in C
    for cell in dict.fromkeys(cells):
        for rid in str(cell).split("/"):
            if rid in RECORDS and rid not in out:
                out.append(rid)
    return out


def sidecar_path(csv_path):
    return os.fspath(csv_path) + ".settings.json"


def read_sidecar(csv_path):
    """The records of a report CSV, ``{id: record}``, from ``<csv>.settings.json`` (without
    the run's summary attrs that ``bpcheck run`` keeps there too: bpcheck/report.py)."""
    with open(sidecar_path(csv_path)) as fh:
        return {k: v for k, v in json.load(fh).items() if k != "summary"}


def check_tf32(tf32):
    if tf32 is not None and tf32 not in TF32_CHOICES:
        raise UsageError(f"tf32 must be on or off, got {tf32!r}")
    return tf32


def check_threads(threads):
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    return threads


@contextmanager
def numerics(tf32=None, deterministic=None, threads=None):
    """Set TF32 ('on'/'off', new API only), deterministic algorithms (True/False) and the
    CPU thread count for the duration of the block; None leaves a setting as it is.
    Everything is put back on exit."""
    check_tf32(tf32)
    check_threads(threads)
    if HAS_NEW_API:
        saved_tf32 = {op: _precision("cuda", op) for op in ("matmul", "conv", "rnn")}
    else:
        cudnn = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
        saved_tf32 = {"matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee", "conv": cudnn, "rnn": cudnn}
    saved_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    saved_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    saved_threads = torch.get_num_threads()
    saved_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")

    def set_tf32(values):  # the new API only: never the legacy allow_tf32 flags
        if not HAS_NEW_API:  # torch < 2.9 has only the legacy flags: no mixing possible
            torch.backends.cuda.matmul.allow_tf32 = values["matmul"] != "ieee"
            torch.backends.cudnn.allow_tf32 = values["conv"] != "ieee"
            return
        torch.backends.cuda.matmul.fp32_precision = values["matmul"]
        torch.backends.cudnn.conv.fp32_precision = values["conv"]
        torch.backends.cudnn.rnn.fp32_precision = values["rnn"]

    try:
        if tf32 is not None:
            set_tf32(dict.fromkeys(saved_tf32, "tf32" if tf32 == "on" else "ieee"))
        if deterministic is not None:
            if deterministic:
                # cuBLAS is deterministic only with a fixed workspace; torch reads this when it
                # creates a cuBLAS handle, so it must be set before the first CUDA matmul.
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(bool(deterministic))
            torch.backends.cudnn.deterministic = bool(deterministic)
            torch.backends.cudnn.benchmark = False if deterministic else saved_cudnn[1]
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        if tf32 is not None:
            set_tf32(saved_tf32)
        if deterministic is not None:
            torch.use_deterministic_algorithms(saved_det[0], warn_only=saved_det[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn
            if saved_env is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        if threads is not None:
            torch.set_num_threads(saved_threads)
