"""Shared pieces of the tests: devices, dtypes, the float64 reference and the tolerance table.

Imported by the test modules after they have checked that torch and rmsnorm import.
"""

import os
import subprocess
import sys

import pytest
import torch

import rmsnorm

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")),
]

# float64 runs on the CPU backend only.
DTYPES = {
    "cpu": [torch.float32, torch.float16, torch.bfloat16, torch.float64],
    "cuda": [torch.float32, torch.float16, torch.bfloat16],
}

# (x's dtype, the residual's dtype) of the residual add: the residual of x's dtype, or
# float32 with 16-bit x (an fp32 residual stream); float64 last, so that [:5] is what CUDA
# serves. RESIDUAL_IDS: their test ids.
RESIDUAL_DTYPES = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float64, torch.float64),
]
RESIDUAL_IDS = [f"{str(a).removeprefix('torch.')}-r{str(b).removeprefix('torch.')}" for a, b in RESIDUAL_DTYPES]


def device_dtypes():
    """(device, dtype) parameters: every dtype each device supports."""
    out = []
    for dev in DEVICES:
        name = dev if isinstance(dev, str) else dev.values[0]
        marks = () if isinstance(dev, str) else dev.marks
        for dt in DTYPES[name]:
            out.append(pytest.param(name, dt, marks=marks, id=f"{name}-{str(dt).removeprefix('torch.')}"))
    return out


def require_cuda_kernels(device):
    if device == "cuda":
        assert rmsnorm.has_cuda_kernels(), "a CUDA device is present but the extension has no CUDA kernels"


# The tolerance table: |got - ref| <= TOL * (|ref| + 1) elementwise, ref in float64 from the
# same (rounded) inputs. Outputs are O(1) (normalised rows times a weight near 1), so the
# absolute part stands for "relative to the row's scale".
#  - float64: float64 accumulation over up to a few thousand terms: ~1e-15, with room.
#  - float32: float32 accumulation of the sum of squares; its error grows like sqrt(N) u
#    (u = 2^-24), ~4e-6 at N = 4096, plus a few roundings.
#  - float16 / bfloat16: the result is rounded once (fp32 cast) or twice (llama cast:
#    x * rstd to the input dtype, then the product): 2 ulps = 4 u, u = 2^-11 / 2^-8.
TOL = {
    torch.float64: 1e-12,
    torch.float32: 2e-5,
    torch.float16: 4 * 2.0**-11,
    torch.bfloat16: 4 * 2.0**-8,
}


def assert_close(got, ref, dtype=None, scale=1.0, what=""):
    """Elementwise |got - ref| <= tol * (|ref| + scale), tol from TOL for `dtype` (default got's)."""
    tol = TOL[dtype or got.dtype]
    got64, ref64 = got.double().cpu(), ref.double().cpu()
    assert got64.shape == ref64.shape, f"{what}: shape {tuple(got64.shape)} != {tuple(ref64.shape)}"
    err = (got64 - ref64).abs()
    bound = tol * (ref64.abs() + scale)
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max error {err.max().item():.3g} exceeds the tolerance {tol:.3g} by {worst:.2f}x"


def reference(x, weight=None, eps=1e-6, offset=0.0):
    """RMSNorm in float64: the exact answer for the rounded inputs."""
    x64 = x.double()
    y = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * (weight.double() + offset)
    return y


def hf_llama(x, weight, eps=1e-6):
    """Hugging Face LlamaRMSNorm's forward, verbatim: the llama cast's specification."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


def make_inputs(shape, dtype, device, weight_dtype=None, seed=0):
    """Random normal x, and a weight near 1 (never constant data)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype=dtype, device=device)
    w = (1 + 0.2 * torch.randn(shape[-1], generator=g, dtype=torch.float64)).to(
        dtype=weight_dtype or dtype, device=device
    )
    return x, w


def run_module(module, *args, timeout=300):
    """`python -m module args...` in a subprocess (one OpenMP thread: the CPU runs are smoke
    tests); asserts that it exits 0 and returns its standard output."""
    run = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout
