"""What ``python -m build`` makes: the wheel installs bpcheck and its subpackages only,
and the sdist carries everything its own tests need, so that they are collected from an
unpacked sdist (MANIFEST.in grafts tests/, examples/, benchmarks/ and docs/).

One build (sdist, then the wheel from that sdist) for the module, without build
isolation: the build backend is the one installed (setuptools, which torch requires),
so no network is needed. Marked ``packaging``: ``-m "not packaging"`` leaves it out.
"""
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = ("tests", "examples", "benchmarks", "docs")  # what the tests import or read
SOURCES = (".py", ".sh", ".md", ".toml", ".json", ".txt", ".yaml", ".yml")

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


def test_wheel_installs_under_bpcheck_only(dist):
    names = zipfile.ZipFile(dist[1]).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"bpcheck"}, top  # never a top-level manual, reference or compare
    for package in ("manual", "reference", "compare", "compare/core", "compare/engines", "compare/diagnosis",
                    "compare/io", "cases", "sweeps"):
        assert f"bpcheck/{package}/__init__.py" in names, package
    assert "bpcheck/cli.py" in names and "bpcheck/plugin.py" in names
    assert not any(n.startswith(("tests/", "examples/")) for n in names)


def _source_files(folder):
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in SOURCES and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts}


def test_sdist_ships_what_its_tests_need(dist, tmp_path):
    with tarfile.open(dist[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    for folder in SHIPPED:
        missing = sorted(_source_files(folder) - names)
        assert not missing, f"the sdist lacks {missing}"
    for needed in ("tests/conftest.py", "tests/mutants.py", "pyproject.toml", "README.md"):
        assert needed in names
    unpacked = next(tmp_path.iterdir())
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "-p", "no:randomly", "tests"], cwd=unpacked, capture_output=True, text=True,
                               timeout=600)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert "error" not in collected.stdout.lower().splitlines()[-1], collected.stdout[-2000:]
