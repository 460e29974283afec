"""rmsnorm: fused RMSNorm kernels for PyTorch (CUDA and CPU).

    import rmsnorm
    y = rmsnorm.rms_norm(x, weight, eps=1e-6)            # functional, differentiable
    norm = rmsnorm.RMSNorm(4096, eps=1e-6).cuda()       # drop-in nn.Module
    rmsnorm.patch(model)                                 # swap a Hugging Face model's RMSNorms

The ops are torch custom ops (torch.ops.rmsnorm.*): they work under torch.compile
(fullgraph) and CUDA-graph capture. `python -m rmsnorm.bench` checks and times them.
"""

from ._ops import has_cuda_kernels, library_path, rms_norm, rms_norm_
from .modules import RMSNorm
from .patch import patch

__version__ = "0.1.0"
__all__ = ["RMSNorm", "has_cuda_kernels", "library_path", "patch", "rms_norm", "rms_norm_"]
