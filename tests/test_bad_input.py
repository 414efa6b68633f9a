"""Bad input: one line naming the problem, exit 2, no traceback, nothing written or
overwritten; the Python API raises UsageError with the very same message.

Each case is given twice, as CLI arguments and as API arguments, and both must fail
before anything is built or written."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bpcheck.cli import main
from bpcheck.compare import UsageError, run
from bpcheck.cases.user import load_case

INT_X = [[1, 0, 1], [0, 1, 1], [0, 0, 1], [1, 1, 1]]
BAD_WEIGHTS = [np.full((3, 4), 0.5), np.full((5, 1), 0.5)]  # layer 2 needs (4, 1)

SIDES = textwrap.dedent('''
    """Two user cases whose sides disagree (for bpcheck's bad-input tests)."""
    from dataclasses import replace

    from bpcheck.cases.mlp import mlp, trask
    from bpcheck.compare import Case


    def layers(dtype, device, seed=None):
        three = mlp(dtype, device, sizes=(3, 4, 4, 1), activations=("sigmoid",) * 3, loss="half_sse", bias=False)
        return replace(trask(dtype, device), reference=three.reference)  # 2 manual layers, 3 reference


    def shapes(dtype, device, seed=None):
        return replace(trask(dtype, device), reference=trask(dtype, device, hidden=5).reference)


    layers_case = Case("layers", "manual 2 layers, reference 3", layers, steps=2)
    shapes_case = Case("shapes", "hidden 4 against hidden 5", shapes, steps=2)
    not_a_case = 42
''')


@pytest.fixture
def sides_file(tmp_path):
    p = tmp_path / "sides.py"
    p.write_text(SIDES)
    return str(p)


INT_WEIGHTS = [np.ones((3, 4), dtype=np.int64), np.ones((4, 1), dtype=np.int64)]


def literal(arrays):
    """A list of arrays as the CLI takes it: a Python literal of nested lists."""
    return "[" + ", ".join(repr(np.asarray(w).tolist()) for w in arrays) + "]"


# (id, CLI arguments after `bpcheck run`, API arguments of run); CSV below is replaced
# by a path in the test's folder, so that "nothing written" is checked every time.
CSV = "<csv>"
CASES = [
    ("unknown case", ["nosuch", "--csv", CSV], dict(case="nosuch", csv=CSV)),
    ("unknown option", ["trask", "-o", "hiden=8", "--csv", CSV], dict(case="trask", hiden=8, csv=CSV)),
    ("unknown optimizer option", ["mlp", "-o", "bogus=1", "--csv", CSV], dict(case="mlp", bogus=1, csv=CSV)),
    ("unknown mode", ["trask", "--mode", "sideways", "--csv", CSV], dict(case="trask", mode="sideways", csv=CSV)),
    ("conflicting force without csv", ["trask", "--force"], dict(case="trask", force=True)),
    ("conflicting sizes and activations", ["mlp", "-o", "sizes=(4, 8, 3)", "-o", "activations=('relu',)", "--csv", CSV],
     dict(case="mlp", sizes=(4, 8, 3), activations=("relu",), csv=CSV)),
    ("steps zero", ["trask", "--steps", "0", "--csv", CSV], dict(case="trask", steps=0, csv=CSV)),
    ("steps negative", ["trask", "--steps", "-5", "--csv", CSV], dict(case="trask", steps=-5, csv=CSV)),
    ("steps not a number", ["trask", "--steps", "ten", "--csv", CSV], dict(case="trask", steps="ten", csv=CSV)),
    ("rtol negative", ["trask", "--rtol", "-1", "--atol", "1e-7", "--csv", CSV],
     dict(case="trask", rtol=-1.0, atol=1e-7, csv=CSV)),
    ("atol not a number", ["trask", "--rtol", "1e-7", "--atol", "tiny", "--csv", CSV],
     dict(case="trask", rtol=1e-7, atol="tiny", csv=CSV)),
    ("rtol nan", ["trask", "--rtol", "nan", "--atol", "1e-7", "--csv", CSV],
     dict(case="trask", rtol=float("nan"), atol=1e-7, csv=CSV)),
    ("only rtol", ["trask", "--rtol", "1e-3", "--csv", CSV], dict(case="trask", rtol=1e-3, csv=CSV)),
    ("only atol", ["trask", "--atol", "1e-3", "--csv", CSV], dict(case="trask", atol=1e-3, csv=CSV)),
    ("dtype unknown", ["trask", "--dtype", "float8", "--csv", CSV], dict(case="trask", dtype="float8", csv=CSV)),
    ("dtype not float", ["trask", "--dtype", "int32", "--csv", CSV], dict(case="trask", dtype="int32", csv=CSV)),
    ("device unknown", ["trask", "--device", "abacus", "--csv", CSV], dict(case="trask", device="abacus", csv=CSV)),
    pytest.param("device cuda without GPU", ["trask", "--device", "cuda", "--csv", CSV],
                 dict(case="trask", device="cuda", csv=CSV), id="device cuda without GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
    ("seed not an integer", ["trask", "--seed", "abc", "--csv", CSV], dict(case="trask", seed="abc", csv=CSV)),
    ("seed negative", ["trask", "--seed", "-1", "--csv", CSV], dict(case="trask", seed=-1, csv=CSV)),
    ("weights shape", ["trask", "-o", "weights=" + literal(BAD_WEIGHTS), "--csv", CSV],
     dict(case="trask", weights=BAD_WEIGHTS, csv=CSV)),
    ("targets shape", ["trask", "-o", "t=[[1.0], [0.0]]", "--csv", CSV], dict(case="trask", t=[[1.0], [0.0]], csv=CSV)),
    ("integer data", ["trask", "-o", "x=" + repr(INT_X), "--csv", CSV], dict(case="trask", x=np.array(INT_X), csv=CSV)),
    ("integer weights", ["relu-sigmoid", "-o", "weights=" + literal(INT_WEIGHTS), "--csv", CSV],
     dict(case="relu-sigmoid", weights=INT_WEIGHTS, csv=CSV)),
    ("layer counts disagree", ["<sides>:layers_case", "--csv", CSV], dict(case="<sides>:layers_case", csv=CSV)),
    ("parameter shapes disagree", ["<sides>:shapes_case", "--csv", CSV], dict(case="<sides>:shapes_case", csv=CSV)),
    ("case file entry is not a Case", ["<sides>:not_a_case", "--csv", CSV], dict(case="<sides>:not_a_case", csv=CSV)),
    ("case file missing", ["nowhere.py:case", "--csv", CSV], dict(case="nowhere.py:case", csv=CSV)),
]


def _fill(value, csv, sides):
    if isinstance(value, str):
        return value.replace(CSV, csv).replace("<sides>", sides)
    return value


def _cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name,cli,api", [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in CASES])
def test_bad_input_cli_and_api_agree(name, cli, api, tmp_path, sides_file, capsys):
    csv = str(tmp_path / "report.csv")
    before = sorted(os.listdir(tmp_path))
    rc, out, err = _cli(["run"] + [_fill(a, csv, sides_file) for a in cli], capsys)
    assert rc == 2, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpcheck: error: "), err
    message = lines[0][len("bpcheck: error: "):]
    kw = {k: _fill(v, csv, sides_file) for k, v in api.items()}
    case = kw.pop("case")
    with pytest.raises(UsageError) as e:
        run(case, **kw)
    assert str(e.value) == message
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


MESSAGES = {  # the message names the problem
    "unknown case": "unknown case 'nosuch'",
    "unknown option": "case trask has no option 'hiden' (its options: x, t, weights, hidden)",
    "unknown optimizer option": "optimizer 'sgd' has no option 'bogus'",
    "conflicting force without csv": "needs csv",
    "conflicting sizes and activations": "sizes (4, 8, 3) make 2 layers but activations ('relu',) name 1",
    "steps zero": "steps must be a positive integer, got 0",
    "steps not a number": "got 'ten'",
    "rtol negative": "rtol must be a non-negative number",
    "only rtol": "give both rtol and atol",
    "dtype unknown": "unknown dtype 'float8'",
    "dtype not float": "not a floating-point dtype",
    "weights shape": "weights[1] has shape (5, 1), the network needs (4, 1)",
    "targets shape": "t has shape (2, 1), the network needs (4, 1)",
    "integer data": "x has dtype int64; bpcheck needs floating-point data",
    "integer weights": "weights[0] has dtype int64",
    "layer counts disagree": "manual side has 2 layers, reference side has 3",
    "parameter shapes disagree": "layer 1 weight: manual shape (3, 4) != reference shape (3, 5)",
    "case file entry is not a Case": "not a bpcheck Case",
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_names_the_problem(name, tmp_path, sides_file):
    (_, _, api), = [c for c in CASES if not hasattr(c, "marks") and c[0] == name]
    kw = {k: _fill(v, str(tmp_path / "r.csv"), sides_file) for k, v in api.items()}
    with pytest.raises(UsageError, match=None) as e:
        run(kw.pop("case"), **kw)
    assert MESSAGES[name] in str(e.value)


def test_existing_csv_is_not_overwritten(tmp_path, capsys):
    p = tmp_path / "r.csv"
    p.write_text("precious\n")
    rc, out, err = _cli(["run", "trask", "--steps", "2", "--csv", str(p)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "exists; pass --force" in err
    with pytest.raises(UsageError) as e:
        run("trask", steps=2, csv=str(p))
    assert err.strip() == f"bpcheck: error: {e.value}"
    assert p.read_text() == "precious\n"
    assert main(["run", "trask", "--steps", "2", "--csv", str(p), "--force"]) == 0
    assert p.read_text().startswith("case,mode,")


def test_existing_csv_untouched_when_a_later_check_fails(tmp_path, capsys):
    """--force with a bad option: the error comes first, the old file stays."""
    p = tmp_path / "r.csv"
    p.write_text("precious\n")
    rc, _, err = _cli(["run", "trask", "--csv", str(p), "--force", "-o", "weights=" + literal(BAD_WEIGHTS)], capsys)
    assert rc == 2 and "weights[1]" in err
    with pytest.raises(UsageError):
        run("trask", csv=str(p), force=True, weights=BAD_WEIGHTS)
    assert p.read_text() == "precious\n"


@pytest.mark.parametrize("where", ["missing", "unwritable", "a folder"])
def test_csv_path_problems(where, tmp_path, capsys):
    if where == "missing":
        path = tmp_path / "no" / "such" / "r.csv"
    elif where == "a folder":
        path = tmp_path
    elif os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        path = ro / "r.csv"
    elif sys.platform.startswith("linux"):
        path = "/proc/bpcheck-report.csv"  # root passes permission bits; /proc takes no new files
    else:
        pytest.skip("root, and no read-only folder known here")
    rc, out, err = _cli(["run", "trask", "--steps", "2", "--csv", str(path)], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "cannot write" in err
    with pytest.raises(UsageError) as e:
        run("trask", steps=2, csv=str(path))
    assert err.strip() == f"bpcheck: error: {e.value}"
    assert not os.path.exists(os.path.join(str(path), "r.csv")) if where == "a folder" else not os.path.isfile(path)


@pytest.mark.parametrize("argv,needle", [
    (["run", "trask", "--dtype", "float32", "--dtype", "float64"], "conflicting values for --dtype"),
    (["run", "trask", "-o", "hidden=3", "-o", "hidden=5"], "option 'hidden' given twice"),
    (["run", "all", "-o", "hidden=3"], "has no option 'hidden'"),  # a later case refuses it, before trask ran
    (["run", "trask", "-o", "hidden"], "is not KEY=VALUE"),
    (["run", "trask", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["run"], "the following arguments are required: case"),
    (["frobnicate"], "invalid choice"),
    (["list", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_only_conflicts(argv, needle, tmp_path, capsys):
    """Conflicts only a command line can express (the API cannot repeat a keyword)."""
    csv = tmp_path / "r.csv"
    rc, out, err = _cli(argv + (["--csv", str(csv)] if argv[:1] == ["run"] and len(argv) > 1 else []), capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and needle in err, err
    assert not csv.exists()


def test_real_process_one_line_no_traceback(tmp_path):
    """The installed entry point, as a user runs it: exit 2, one line, no traceback."""
    exe = os.path.join(os.path.dirname(sys.executable), "bpcheck")
    p = subprocess.run([exe, "run", "trask", "--steps", "0", "--csv", str(tmp_path / "r.csv")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr == "bpcheck: error: steps must be a positive integer, got 0\n"
    assert "Traceback" not in p.stdout + p.stderr
    assert not (tmp_path / "r.csv").exists()


def test_case_file_runs(tmp_path, capsys):
    """The FILE.py:NAME form runs a user's own correct case."""
    p = tmp_path / "mine.py"
    p.write_text("from dataclasses import replace\nfrom bpcheck.cases import get_case\n"
                 "mine = replace(get_case('sigmoid-bias'), name='mine')\n")
    assert load_case(f"{p}:mine").name == "mine"
    assert main(["run", f"{p}:mine", "--steps", "3"]) == 0
    assert "mine: PASS" in capsys.readouterr().out


# ---- issue 14: bad input that used to give a traceback and exit 1, or pass silently ---------

CASE_FILES = {
    "exits.py": "import sys\nsys.exit(0)\n",
    "ctrl_c.py": "raise KeyboardInterrupt\n",
    "imports.py": "import bpcheck_no_such_module\n",
    "builds.py": textwrap.dedent('''
        from bpcheck.compare import Case


        def returns_int(dtype, device, seed=None):
            return 42


        def raises(dtype, device, seed=None):
            raise ZeroDivisionError("the author's own bug")


        int_case = Case("int_case", "build returns an int", returns_int, steps=2)
        raising = Case("raising", "build raises", raises, steps=2)
    '''),
}


@pytest.mark.parametrize("argv,needle", [
    (["run", "trask", "-o", "hidden=0"], "case trask: option hidden must be a positive integer, got 0"),
    (["run", "trask", "-o", "hidden=2000000000"], "case trask: building it with these options needs more memory than there is"),
    (["run", "trask", "-o", "x=[]"], "case trask: its build failed with these options (IndexError"),
    (["run", "mlp", "-o", "activations=()"], "case mlp: option activations must be a tuple of names, one per layer"),
    (["run", "trask", "--dtype", "float8_e4m3fn", "--rtol", "0.1", "--atol", "0.1"],
     "dtype float8_e4m3fn is not supported (float64, float32, float16, bfloat16)"),
    (["run", "trask", "--csv", "<d>/r.csv/"], "it names a folder"),
    (["run", "trask", "--csv", ""], "the report path is empty"),
    (["run", "<d>/exits.py:x"], "exits.py: it called sys.exit(0) while being imported"),
    (["run", "<d>/ctrl_c.py:x"], "ctrl_c.py: it raised KeyboardInterrupt while being imported"),
    (["run", "<d>/imports.py:x"], "imports.py: ModuleNotFoundError: No module named 'bpcheck_no_such_module'"),
    (["run", "<d>/builds.py:int_case"], "case int_case: its build returned int, not a Setup"),
    (["run", "<d>/builds.py:raising"], "builds.py:raising: its build failed (ZeroDivisionError: the author's own bug)"),
    (["devices", "trask", "--a", "cpu:float64", "--b", "cpu:float32", "--force"], "--force overwrites a CSV: it needs --csv"),
    (["run", "trask", "-o", "weights=[[1, 2]"], "option weights: '[[1, 2]' is not a Python literal"),
    (["run", "trask", "-o", "hidden=4 4"], "option hidden: '4 4' is not a Python literal"),
    (["report", "<d>/empty_step.csv"], "is not a bpcheck CSV: row 2 has no step"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    for name, text in CASE_FILES.items():
        (tmp_path / name).write_text(text)
    df = run("trask", steps=1)
    df.loc[0, "step"] = None
    df.to_csv(tmp_path / "empty_step.csv", index=False)
    before = sorted(os.listdir(tmp_path))
    rc, out, err = _cli([a.replace("<d>", str(tmp_path)) for a in argv], capsys)
    assert rc == 2, (out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("bpcheck: error: ") and needle in err, err
    assert sorted(os.listdir(tmp_path)) == before


def test_bare_words_stay_strings():
    from bpcheck.cli import parse_options

    assert parse_options(["loss=bce", "optimizer=rmsprop", "lr=1e-3", "sizes=(2, 3)"]) == \
        {"loss": "bce", "optimizer": "rmsprop", "lr": 1e-3, "sizes": (2, 3)}


def test_api_bad_inputs_are_usage_errors(tmp_path):
    from torch import nn

    from bpcheck.testing import assert_backprop_close

    with pytest.raises(UsageError, match="case must be a case name or a bpcheck Case, got int"):
        run(42)
    with pytest.raises(UsageError, match="got bytes"):
        run("trask", steps=1, csv=b"b.csv")
    x, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    manual, ref = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    with pytest.raises(UsageError, match="the loss must return a scalar"):
        assert_backprop_close(manual, ref, x, t, loss=lambda y, t: ((y - t) ** 2).sum(1), csv=tmp_path / "r.csv")
    ref.weight.requires_grad_(False)
    with pytest.raises(UsageError, match="reference layer 1 weight is frozen"):
        assert_backprop_close(manual, ref, x, t)
    assert os.listdir(tmp_path) == []
