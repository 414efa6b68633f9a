"""The conv nets as torch.nn modules: nn.Conv1d/2d -> activation -> [nn.MaxPool1d/2d]
-> [nn.Flatten -> nn.Linear -> nn.Softmax], wrapped in the generic Reference.

The Reference's forward hooks on nn.Conv and nn.Linear give delta = dL/d(module
output) (the pre-activation) and error_prev = dL/d(module input) from autograd,
exactly as for the MLPs; nothing here is derived by hand.
"""
from torch import nn

from .mlp import ACT_MODULES, LOSS_FNS
from .optim import seed_form, torch_optimizer
from .side import Reference

CONV = {1: nn.Conv1d, 2: nn.Conv2d}
POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
# seed 000's figure feeds a given delta through L = sum(g * y): dL/dy = g
PROBE = lambda y, g: (g * y).sum()  # noqa: E731


def build_convnet(K, b, W=None, c=None, stride=1, padding=0, pool=None, act="relu", loss="cross_entropy_probs",
                  optimizer="sgd", lr=1.0, **opt_kw):
    """K (O, C, *k), b (O,), W (F, out) and c (out,) in the manual layout; the one layout
    conversion happens in Reference.load."""
    nd = K.dim() - 2
    conv = CONV[nd](K.shape[1], K.shape[0], tuple(K.shape[2:]), stride=stride, padding=padding,
                    dtype=K.dtype, device=K.device)
    mods, layers, params = [conv, ACT_MODULES[act]()], [conv], [{"weight": K, "bias": b}]
    if pool:
        mods.append(POOL[nd](pool))
    if W is not None:
        lin = nn.Linear(W.shape[0], W.shape[1], dtype=W.dtype, device=W.device)
        mods += [nn.Flatten(), lin, ACT_MODULES["softmax"]()]
        layers.append(lin)
        params.append({"weight": W, "bias": c})
    module = nn.Sequential(*mods)
    ref = Reference(module, layers, PROBE if loss == "probe" else LOSS_FNS[loss],
                    torch_optimizer(optimizer, list(module.parameters()), lr, **opt_kw),
                    seed_state=seed_form(optimizer, opt_kw))
    ref.load(params)
    return ref
