"""The pytest plugin under pytest-xdist: `-n 2 --bpcheck-report PATH` writes one valid
report, merged from the workers' parts, holding exactly the rows of the same session run
without xdist."""
import json
import os

import pandas as pd

from bpcheck.report import read_report

pytest_plugins = ["pytester"]

TESTS = '''
import pytest
import torch
from torch import nn

from bpcheck.manual import MLP, SGD


@pytest.mark.parametrize("seed", range(6))
def test_net(backprop, seed):
    g = torch.Generator().manual_seed(seed)
    kw = backprop.factory_kwargs
    W1, W2 = torch.randn(3, 4, generator=g).to(**kw), torch.randn(4, 2, generator=g).to(**kw)
    net = MLP([W1.clone(), W2.clone()], None, ["tanh", "identity"], "mse", SGD(0.1))
    ref = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False)).to(**kw)
    with torch.no_grad():
        ref[0].weight.copy_(W1.T)
        ref[2].weight.copy_(W2.T)
    x, t = torch.randn(8, 3, generator=g).to(**kw), torch.randn(8, 2, generator=g).to(**kw)
    backprop(net, ref, x, t, loss="mse", optimizer=0.1, steps=3 + seed)
'''

KEY = ["case", "step", "layer", "quantity"]


def test_xdist_workers_write_one_merged_report(pytester):
    pytester.makepyfile(test_nets=TESTS)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--bpcheck-report", "x.csv")
    res.assert_outcomes(passed=6)
    res.stdout.fnmatch_lines(["*2 workers*"])
    merged = read_report(pytester.path / "x.csv")  # one header, every row parses
    assert (pytester.path / "x.csv").read_text().count("case,mode,") == 1
    assert sorted(p for p in os.listdir(pytester.path) if p.startswith(".x.csv")) == []  # the parts are gone
    workers = set(json.loads((pytester.path / "x.csv.settings.json").read_text()))
    res.stdout.fnmatch_lines([f"*bpcheck: {len(merged)} report rows in x.csv*"])

    # a subprocess too: an in-process run drops the modules it imported (torch._dynamo among them),
    # and importing those again in a later test fails
    alone = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "--bpcheck-report", "one.csv")
    alone.assert_outcomes(passed=6)
    one = read_report(pytester.path / "one.csv")
    assert len(merged) == len(one) == sum(3 + s for s in range(6)) * len(one[one["step"] == 1]) // 6
    a, b = (df.sort_values(KEY).reset_index(drop=True).drop(columns="settings") for df in (merged, one))
    pd.testing.assert_frame_equal(a, b)
    assert set(merged["settings"]) <= workers
