"""The seeds' sign convention and bpcheck's are the same update, bit for bit."""
import numpy as np
import torch

from bpcheck.cases.mlp import TRASK_X, TRASK_Y, trask


def seed_form_trask(steps):
    """Seed 004's loop as its text writes it: error = y - l2, syn += l.T @ delta."""
    rng = np.random.RandomState(1)
    syn0 = 2 * rng.random_sample((3, 4)) - 1
    syn1 = 2 * rng.random_sample((4, 1)) - 1
    for _ in range(steps):
        l1 = 1 / (1 + np.exp(-(TRASK_X @ syn0)))
        l2 = 1 / (1 + np.exp(-(l1 @ syn1)))
        l2_delta = (TRASK_Y - l2) * (l2 * (1 - l2))
        l1_delta = (l2_delta @ syn1.T) * (l1 * (1 - l1))
        syn1 += l1.T @ l2_delta
        syn0 += TRASK_X.T @ l1_delta
    return syn0, syn1


def test_seed_sign_convention_gives_the_same_weights():
    setup = trask(dtype=torch.float64, device="cpu")
    m = setup.manual
    for _ in range(200):
        m.update(m.step(setup.x, setup.t))
    syn0, syn1 = seed_form_trask(200)
    # The same update up to the sigmoid's implementation (torch vs numpy exp): far below any tolerance.
    np.testing.assert_allclose(m.params[0]["weight"].numpy(), syn0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(m.params[1]["weight"].numpy(), syn1, rtol=0, atol=1e-13)
