"""rmsnorm.fusing_backend / fuse_residual: the residual add fused into the norm under torch.compile."""

import copy

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except OSError as e:  # the extension library is missing: the suite cannot run
    pytest.skip(f"rmsnorm's extension library did not load: {e}", allow_module_level=True)
from torch import nn  # noqa: E402

from _support import DEVICES, assert_close, make_inputs, require_cuda_kernels  # noqa: E402

import test_modules  # noqa: E402  (the tiny Hugging Face models and their tolerances)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test compiles AddNorm.forward anew (other modules, backends, dtypes): without a
    reset each compilation stays in that code object's cache, and past Dynamo's recompile
    limit (8) the later tests fail with fullgraph=True (as they did when the CUDA cases ran
    too)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class AddNorm(nn.Module):
    """A decoder layer's tail: the sum is the next residual and the norm's input."""

    def __init__(self, cols, dtype, device, cast="fp32", offset=0.0):
        super().__init__()
        self.norm = rmsnorm.RMSNorm(cols, eps=1e-6, cast=cast, offset=offset, dtype=dtype, device=device)
        with torch.no_grad():
            self.norm.weight.normal_(1.0, 0.2)

    def forward(self, hidden, residual):
        hidden = residual + hidden
        return self.norm(hidden), hidden * 2  # the sum read again after the norm


def _pair(shape, dtype, device):
    """hidden and residual: random, different (never constant data)."""
    return make_inputs(shape, dtype, device, seed=1)[0], make_inputs(shape, dtype, device, seed=2)[0]


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cast", ["fp32", "llama"])
def test_fused_forward_is_bit_identical(device, dtype, cast):
    require_cuda_kernels(device)
    block = AddNorm(96, dtype, device, cast=cast, offset=1.0 if cast == "fp32" else 0.0)
    h, r = _pair((2, 7, 96), dtype, device)
    backend = rmsnorm.fusing_backend("aot_eager")
    compiled = torch.compile(block, backend=backend, fullgraph=True)
    with torch.no_grad():
        want_y, want_s = block(h, r)
        got_y, got_s = compiled(h, r)
    assert backend.fused == 1
    assert torch.equal(got_y, want_y) and torch.equal(got_s, want_s)


def test_dynamic_shapes():
    """With symbolic sizes (dynamic=True) the shapes still compare: one graph serves every
    row count, fused."""
    block = AddNorm(64, torch.float32, "cpu")
    backend = rmsnorm.fusing_backend("aot_eager")
    compiled = torch.compile(block, backend=backend, dynamic=True, fullgraph=True)
    for rows in (3, 5, 9):
        h, r = _pair((rows, 64), torch.float32, "cpu")
        with torch.no_grad():
            got, want = compiled(h, r), block(h, r)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert backend.fused == 1  # one graph


@pytest.mark.parametrize("device", DEVICES)
def test_fused_gradients(device):
    require_cuda_kernels(device)
    dtype = torch.bfloat16
    block = AddNorm(128, dtype, device)
    ref = copy.deepcopy(block)
    h, r = (t.requires_grad_() for t in _pair((3, 5, 128), dtype, device))
    h2, r2 = (t.detach().clone().requires_grad_() for t in (h, r))
    backend = rmsnorm.fusing_backend("aot_eager")
    y, s = torch.compile(block, backend=backend, fullgraph=True)(h, r)
    want_y, want_s = ref(h2, r2)
    assert backend.fused == 1
    assert torch.equal(y, want_y) and torch.equal(s, want_s)
    g = torch.Generator().manual_seed(3)
    dy, ds = (torch.randn(y.shape, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    torch.autograd.backward((y, s), (dy, ds))
    torch.autograd.backward((want_y, want_s), (dy, ds))
    # The fused backward adds the norm's gradient and the sum's in fp32 and rounds once;
    # autograd rounds the norm's to bf16 before adding: the norm's backward tolerance.
    assert_close(h.grad, h2.grad, what="dh")
    assert_close(r.grad, r2.grad, what="dr")
    assert_close(block.norm.weight.grad, ref.norm.weight.grad, what="dw")


@pytest.mark.parametrize("device", DEVICES)
def test_inductor_behind_the_fusion(device):
    """The default inner backend, inductor, compiles the rewritten graph (its C++ on the CPU)."""
    require_cuda_kernels(device)
    block = AddNorm(256, torch.bfloat16, device)
    h, r = _pair((8, 256), torch.bfloat16, device)
    backend = rmsnorm.fusing_backend()
    with torch.no_grad():
        got, want = torch.compile(block, backend=backend, fullgraph=True)(h, r), block(h, r)
    assert backend.fused == 1
    assert torch.equal(got[0], want[0])
    assert_close(got[1], want[1], what="2 * residual_out")  # inductor's own kernel for the product


def test_adds_that_are_not_a_residual_add_stay():
    """A broadcast, a dtype promotion or a scaled add is left as it is, and still right."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = rmsnorm.RMSNorm(32, eps=1e-6)

        def forward(self, x, bias, x16):
            a = self.norm(x + bias)  # broadcast
            b = self.norm(x + x16)  # float32 + bfloat16
            c = self.norm(torch.add(x, x, alpha=2))  # scaled
            return a, b, c

    x, bias = torch.randn(4, 32), torch.randn(32)
    x16 = torch.randn(4, 32).to(torch.bfloat16)
    backend = rmsnorm.fusing_backend("aot_eager")
    model = Odd()
    got = torch.compile(model, backend=backend, fullgraph=True)(x, bias, x16)
    assert backend.fused == 0
    for g, w in zip(got, model(x, bias, x16)):
        assert torch.equal(g, w)


def test_fuse_residual_rewrites_the_graph():
    """The graph: one fused op where the add and the norm were, the sum's readers moved to it."""
    block = AddNorm(64, torch.float32, "cpu")
    graphs = []

    def capture(gm, example_inputs):
        graphs.append((rmsnorm.fuse_residual(gm), gm))
        return gm.forward

    with torch.no_grad():
        torch.compile(block, backend=capture, fullgraph=True)(*_pair((4, 64), torch.float32, "cpu"))
    (fused, gm), = graphs
    assert fused == 1
    assert _count(gm, torch.ops.rmsnorm.fused_add_rms_norm.default) == 1
    assert _count(gm, torch.ops.rmsnorm.rms_norm.default) == 0
    assert not any(n.op == "call_function" and n.target.__name__ == "add" for n in gm.graph.nodes)


@pytest.mark.skipif(test_modules.transformers is None, reason="transformers is not installed")
@pytest.mark.parametrize("kind", ["llama", "qwen3", "gemma", "gemma2"])
def test_patched_model_compiled_with_fusion(kind):
    """A tiny Hugging Face model, patched and compiled with the fusing backend: every add that
    feeds a norm fused (two a layer; Gemma 2's norms of the sublayers' outputs read no sum),
    logits bit for bit the patched model's, gradients within the model tolerance of the
    unpatched one's."""
    dtype = torch.float32
    ref = test_modules._tiny(kind).to(dtype=dtype)
    model = copy.deepcopy(ref)
    rmsnorm.patch(model)
    ids = torch.randint(0, test_modules._COMMON["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))

    backend = rmsnorm.fusing_backend("aot_eager")
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        got, want = compiled(ids).logits, model(ids).logits
    assert backend.fused == 2 * test_modules._COMMON["num_hidden_layers"]
    assert torch.equal(got, want)

    backend = rmsnorm.fusing_backend("aot_eager")
    compiled = torch.compile(model, backend=backend)
    compiled(ids, labels=ids).loss.backward()
    ref(ids, labels=ids).loss.backward()
    assert backend.fused == 2 * test_modules._COMMON["num_hidden_layers"]
    tol = test_modules._MODEL_TOL[dtype]
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        err = test_modules._max_rel(p.grad, ref_grads[name].grad)
        assert err <= tol, f"{name}: {err:.3g}"
