"""Every code block of README.md and docs/ is run, and the site builds strictly.

The fences, decided once here (docs/index.md repeats them for writers):

- ```python: executed. The blocks of one page share one namespace and one temporary
  folder (the current directory while they run), in page order.
- ```python title="NAME.py" (any language with a file-name title): written to that file
  in the page's folder, not executed; later blocks use it. A title naming a file of the
  repository (``examples/sweep.toml``) is a quotation instead: the block must equal it.
- ```bash: each command is run (a line ending in ``\\`` continues); it must exit 0, or
  the status its trailing comment declares: ``# exit 1``, ``# exit 2: ...``.
- ```console: ``$ command`` lines are run likewise; the lines after each are its output,
  stdout and stderr together, compared line by line. Numbers may differ by 1% (integers
  not at all), a time (``0.29 s``, ``12 ms``) may be anything, ``...`` inside a line
  matches any text, and a line that is only ``...`` matches any number of lines.
- ```text, ```toml, ```yaml, ```csv: data or sample output, not run.
- title="not run: REASON" on any block: skipped, with the reason shown to the reader in
  the block's title. At most MAX_NOT_RUN of them (a GPU, a long benchmark, Ray).
- A fence without a language is refused: every block says what it is.

README's first ```bash block is the set-up (CI's .ci/run runs its two lines); it is
checked to be exactly SETUP and not run again.

Every folder of the page holds links to the repository's examples/, benchmarks/ and
tests/, so commands read as they would in a clone. ``bpcheck ...`` commands without shell
syntax run in this process through ``bpcheck.cli.main``, the console script's own
function (the same argv, output and exit status, without a second of torch import per
command), and ``python FILE.py ARGS`` through ``runpy`` as Python runs a script (as
``__main__``, its folder first on sys.path); ``bpcheck sweep``, ``python -m ...`` and shell
pipelines run in a subprocess with this interpreter's bin/ first on PATH.
"""
import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
LINKED = ("examples", "benchmarks", "tests")
MAX_NOT_RUN = 8
DATA = {"text", "toml", "yaml", "csv", "json"}
RUN = {"python", "bash", "console"}
SETUP = [
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[test]" && bpcheck run all',
    ". .venv/bin/activate && python -m pytest",
]
TIMEOUT = 120


class Block:
    def __init__(self, page, line, info, body):
        self.page, self.line, self.body = page, line, body
        m = re.match(r"(\S*)\s*(.*)", info)
        self.lang, attrs = m.group(1), m.group(2)
        t = re.search(r'title="([^"]*)"', attrs)
        self.title = t.group(1) if t else None

    @property
    def id(self):
        page = self.page.relative_to(ROOT) if ROOT in self.page.parents else self.page.name
        return f"{page}:{self.line}"

    @property
    def not_run(self):
        return self.title is not None and self.title.startswith("not run")

    @property
    def file(self):
        t = self.title
        return t if t and not self.not_run and re.fullmatch(r"[\w./-]+\.\w+", t) else None


def blocks(page):
    """The fenced blocks of a Markdown page, fences possibly indented (in a list)."""
    out, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+)(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info, start, body = m.group(1), m.group(2), m.group(3).strip(), i + 1, []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{fence}\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        out.append(Block(page, start, info, "\n".join(body) + "\n"))
    return out


ALL = [b for p in PAGES for b in blocks(p)]
SETUP_BLOCK = next(b for b in ALL if b.page.name == "README.md" and b.lang == "bash")
RUNNABLE = [b for b in ALL if b is not SETUP_BLOCK and (b.lang in RUN or b.file) and not b.not_run]


def commands(text):
    """Shell commands of a bash block: ``\\``-continued lines joined, comments and blanks dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.lstrip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


def expected_status(cmd):
    m = re.search(r"#\s*exit (\d+)", cmd)
    return int(m.group(1)) if m else 0


def strip_comment(cmd):
    """The command without its trailing comment (a ``#`` outside quotes, after a space)."""
    quote = None
    for k, ch in enumerate(cmd):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or cmd[k - 1].isspace()):
            return cmd[:k].rstrip()
    return cmd


def execute(cmd):
    """Run one shell command in the current directory: (status, stdout and stderr together)."""
    words = shlex.split(cmd) if not re.search(r"[|;&<>`$]", cmd) else []
    if words[:1] == ["bpcheck"] and words[1:2] != ["sweep"]:
        from bpcheck.cli import main

        return in_process(lambda: main(words[1:]))
    if words[:1] in (["python"], ["python3"]) and len(words) > 1 and words[1].endswith(".py"):
        return in_process(lambda: script(words[1:]))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("COLUMNS", None)
    p = subprocess.run(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                       timeout=TIMEOUT)
    return p.returncode, p.stdout


def in_process(call):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = call()
        except SystemExit as e:  # argparse's errors, a script's sys.exit()
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001 (a script's uncaught exception: its traceback, status 1)
            traceback.print_exc()
            status = 1
    return status or 0, out.getvalue()


def script(argv):
    """``python FILE.py ARGS`` as Python runs it: __main__, sys.argv, its folder first on sys.path."""
    path = os.path.abspath(argv[0])
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = list(argv), [os.path.dirname(path)]
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return 0


NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
TIME = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b")


def line_matches(want, got):
    """One expected line against one actual line: text exact (runs of spaces as one), numbers
    within 1% (integers exactly), times anything, ``...`` any text."""
    want, got = TIME.sub("<time>", " ".join(want.split())), TIME.sub("<time>", " ".join(got.split()))
    pattern, nums = "", []
    pieces = re.split(r"( ?)\.\.\.( ?)", want)  # text, left space, right space, text, ...
    for k in range(0, len(pieces), 3):
        if k:
            left, right = pieces[k - 2], pieces[k - 1]
            pattern += {(" ", " "): r" (?:.*? )?", (" ", ""): " .*?", ("", " "): ".*? ", ("", ""): ".*?"}[left, right]
        part, pos = pieces[k], 0
        for m in NUMBER.finditer(part):
            pattern += re.escape(part[pos:m.start()]) + f"({NUMBER.pattern})"
            nums.append(m.group())
            pos = m.end()
        pattern += re.escape(part[pos:])
    m = re.fullmatch(pattern, got)
    if not m:
        return False
    for w, g in zip(nums, m.groups()):
        if re.fullmatch(r"[-+]?\d+", w):
            if w.lstrip("+") != g.lstrip("+"):
                return False
        elif abs(float(w) - float(g)) > 0.01 * max(abs(float(w)), abs(float(g))):
            return False
    return True


def output_matches(want, got):
    """Lines, with a line of ``...`` matching any number of lines (tried shortest first)."""
    if not want:
        return not got
    if want[0].strip() == "...":
        return any(output_matches(want[1:], got[k:]) for k in range(len(got) + 1))
    return bool(got) and line_matches(want[0], got[0]) and output_matches(want[1:], got[1:])


def console(text):
    """(command, expected output lines) pairs of a console block."""
    pairs = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"console output before any $ command: {line!r}")
    return pairs


class Page:
    """One page's folder and namespace; its blocks run in order, each once."""

    def __init__(self, page, folder):
        self.folder, self.ns, self.done = folder, {"__name__": "__docs__"}, {}
        for name in LINKED:
            (folder / name).symlink_to(ROOT / name)
        self.blocks = [b for b in RUNNABLE if b.page == page]

    def run_through(self, block):
        for b in self.blocks:
            if b.id not in self.done:
                try:
                    self.done[b.id] = None
                    with chdir(self.folder):
                        run_block(b, self)
                except Exception as e:  # noqa: BLE001 (recorded; the block's own test raises it)
                    self.done[b.id] = e
            if b is block:
                break
        failed = self.done[block.id]
        earlier = [b.id for b in self.blocks[:self.blocks.index(block)] if self.done.get(b.id)]
        if failed is not None:
            raise failed
        if earlier:
            pytest.fail(f"an earlier block of this page failed: {', '.join(earlier)}")


@contextlib.contextmanager
def chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_block(b, page):
    if b.file:
        repo_file = ROOT / b.file
        if repo_file.exists():
            assert b.body == repo_file.read_text(), f"{b.id} quotes {b.file} but differs from it"
            return
        target = (page.folder / b.file).resolve()
        assert page.folder.resolve() in target.parents and ROOT not in target.parents, f"{b.id}: {b.file} is outside the page's folder"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(b.body)
        return
    if b.lang == "python":
        exec(compile(b.body, b.id, "exec"), page.ns)
    elif b.lang == "bash":
        for cmd in commands(b.body):
            status, out = execute(strip_comment(cmd))
            assert status == expected_status(cmd), f"{b.id}: `{cmd}` exited {status}\n{out}"
    elif b.lang == "console":
        for cmd, want in console(b.body):
            status, out = execute(strip_comment(cmd))
            assert status == expected_status(cmd), f"{b.id}: `{cmd}` exited {status}\n{out}"
            got = out.rstrip("\n").splitlines() if out.strip() else []
            while want and not want[-1].strip():
                want.pop()
            assert output_matches(want, got), (f"{b.id}: output of `{cmd}` differs\n--- documented\n"
                                               + "\n".join(want) + "\n--- actual\n" + "\n".join(got))


@pytest.fixture(scope="session")
def pages(tmp_path_factory):
    made = {}

    def get(page):
        if page not in made:
            made[page] = Page(page, tmp_path_factory.mktemp(re.sub(r"\W", "_", page.stem)))
        return made[page]

    return get


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_block(block, pages):
    pages(block.page).run_through(block)


def test_readme_starts_with_the_setup_commands():
    """CI (.ci/run) runs the two lines of README's first ```bash block (read as its awk
    reads it); they must stay these, and that block must be README's first."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash") + 1
    assert lines[start:lines.index("```", start)] == SETUP
    assert blocks(ROOT / "README.md")[0].id == SETUP_BLOCK.id == f"README.md:{start}"


def test_every_block_says_what_it_is():
    unknown = [f"{b.id} ({b.lang or 'no language'})" for b in ALL if b.lang not in RUN | DATA]
    assert not unknown, "give each fence one of " + ", ".join(sorted(RUN | DATA)) + ": " + ", ".join(unknown)
    not_run = [b for b in ALL if b.not_run]
    assert all(re.fullmatch(r"not run: .+", b.title) for b in not_run), "say why: title=\"not run: REASON\""
    assert len(not_run) <= MAX_NOT_RUN, "blocks not run: " + ", ".join(f"{b.id} ({b.title})" for b in not_run)


def test_output_comparison():
    """The console comparison itself: it must refuse what differs."""
    assert line_matches("PASS  (50 steps, 2.776e-17)", "PASS (50 steps, 2.7759e-17)")
    assert not line_matches("PASS (50 steps)", "PASS (51 steps)")
    assert not line_matches("margin 0.0494", "margin 0.0594")
    assert not line_matches("trask: PASS", "trask: FAIL")
    assert line_matches("settings ...: torch ...", "settings fd3c9698: torch 2.13.0+cpu, CPU")
    assert line_matches("took 0.29 s", "took 12 s")
    assert line_matches("trask ... steps", "trask steps") and not line_matches("trask ... steps", "trasks steps")
    assert output_matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert not output_matches(["a", "d"], ["a", "b", "d"])
    assert not output_matches(["a"], ["a", "b"])


def test_a_wrong_block_fails(tmp_path):
    """The runner itself: an undeclared exit status, a wrong output and a failing python
    block each fail; the right ones pass."""
    md = tmp_path / "page.md"
    md.write_text("```bash\nfalse  # exit 1\n```\n\n```bash\nfalse\n```\n\n"
                  "```console\n$ echo 3 apples\n3 apples\n$ echo 3 apples\n4 apples\n```\n\n"
                  "```python\nassert 1 + 1 == 3\n```\n")
    page = Page.__new__(Page)
    page.folder, page.ns = tmp_path, {}
    right, undeclared, wrong_output, wrong_python = blocks(md)
    run_block(right, page)
    for b in (undeclared, wrong_output, wrong_python):
        with pytest.raises(AssertionError):
            run_block(b, page)


def test_site_builds_strictly(tmp_path):
    """mkdocs build --strict: a broken link, a page missing from nav, a docstring that
    mkdocstrings cannot render each fail the build."""
    pytest.importorskip("mkdocs")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == 0, p.stdout
    assert (tmp_path / "site" / "index.html").exists()
