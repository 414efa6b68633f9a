"""The seeds' sign convention and bpcheck's are the same update, up to rounding."""
import numpy as np
import torch

from bpcheck.cases.mlp import trask, trask_numpy_loop


def test_seed_sign_convention_gives_the_same_weights():
    setup = trask(dtype=torch.float64, device="cpu")
    m = setup.manual
    for _ in range(200):
        m.update(m.step(setup.x, setup.t))
    syn0, syn1 = trask_numpy_loop(200)
    # The same update up to the sigmoid's implementation (torch vs numpy exp): far below any tolerance.
    np.testing.assert_allclose(m.params[0]["weight"].numpy(), syn0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(m.params[1]["weight"].numpy(), syn1, rtol=0, atol=1e-13)
