"""Helpers shared by the cases: user data checks and tensor conversion."""
import numpy as np
import torch

from bpcheck.compare.core.errors import UsageError


def as_tensor(a, name, dtype, device):
    """User data or weights -> a float tensor on ``device``; integer or bool data is refused."""
    arr = a if isinstance(a, torch.Tensor) else np.asarray(a)
    kind = arr.dtype.is_floating_point if isinstance(arr, torch.Tensor) else np.issubdtype(arr.dtype, np.floating)
    if not kind:
        raise UsageError(f"{name} has dtype {arr.dtype}; bpcheck needs floating-point data")
    t = arr if isinstance(arr, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(arr))
    return t.to(device=device, dtype=dtype).clone()


def expect_shape(t, shape, name):
    if tuple(t.shape) != tuple(shape):
        raise UsageError(f"{name} has shape {tuple(t.shape)}, the network needs {tuple(shape)}")
