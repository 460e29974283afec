"""rmsnorm: fused RMSNorm kernels for PyTorch (CUDA and CPU).

    import rmsnorm
    y = rmsnorm.rms_norm(x, weight, eps=1e-6)            # functional, differentiable
    norm = rmsnorm.RMSNorm(4096, eps=1e-6).cuda()       # drop-in nn.Module
    rmsnorm.patch(model)                                 # swap a Hugging Face model's RMSNorms
    torch.compile(model, backend=rmsnorm.fusing_backend())  # + its residual adds fused into them
    y, residual = rmsnorm.fused_add_rms_norm(x, residual, weight)   # residual add + norm
    y, residual = rmsnorm.fused_allreduce_add_rms_norm(x_partial, residual, weight, group=tp)  # + all-reduce
    q, scales = rmsnorm.rms_norm_quant(x, weight, qdtype=torch.float8_e4m3fn, scale="row")

The ops are torch custom ops (torch.ops.rmsnorm.*): they work under torch.compile
(fullgraph) and CUDA-graph capture. `python -m rmsnorm.bench` checks and times them.
"""

import torch as _torch

from . import _sharded_ops  # noqa: F401  (fake kernels of the sharded-row ops)
from ._ops import fused_add_rms_norm, has_cuda_kernels, library_path, rms_norm, rms_norm_, rms_norm_quant
from .allreduce import fused_allreduce_add_rms_norm
from .fusion import fuse_residual, fusing_backend
from .modules import RMSNorm
from .patch import patch

# DTensor sharding rules and the process-group path (rms_norm(..., group=pg)).
if _torch.distributed.is_available():
    from . import distributed  # noqa: F401

__version__ = "0.1.0"
__all__ = [
    "RMSNorm",
    "fused_add_rms_norm",
    "fused_allreduce_add_rms_norm",
    "fuse_residual",
    "fusing_backend",
    "has_cuda_kernels",
    "library_path",
    "patch",
    "rms_norm",
    "rms_norm_",
    "rms_norm_quant",
]
