"""The same networks as torch.nn models; every gradient and intermediate comes from autograd."""
from .layout import to_manual, to_module
from .side import Reference
from .mlp import build_mlp, LOSS_FNS

__all__ = ["to_manual", "to_module", "Reference", "build_mlp", "LOSS_FNS"]
