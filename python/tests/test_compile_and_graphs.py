"""torch.compile(fullgraph=True) gives the eager values; CUDA-graph capture and replay work."""

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

from _support import DEVICES, HAS_CUDA, make_inputs, require_cuda_kernels  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _step(norm_fn, x, w, dy):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = norm_fn(x, w)
    y.backward(dy)
    return y.detach(), x.grad, w.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compile_fullgraph_forward_and_backward(device, dtype):
    require_cuda_kernels(device)
    x, w = make_inputs((4, 8, 256), dtype, device)
    dy = torch.randn_like(x)

    def fn(x, w):  # the norm between two other ops, as in a model
        return rmsnorm.rms_norm(x * 2, w, 1e-6, offset=0.5) + 1

    eager = _step(fn, x, w, dy)
    compiled = _step(torch.compile(fn, fullgraph=True), x, w, dy)
    for name, a, b in zip(("y", "dx", "dw"), eager, compiled):
        # the same kernels run; only inductor's fusion of `x * 2` and `+ 1` may round differently
        torch.testing.assert_close(b, a, msg=name)

    with torch.no_grad():  # the inference op
        torch.testing.assert_close(torch.compile(fn, fullgraph=True)(x, w), fn(x, w))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_module_dynamic_shapes_and_in_place(device):
    require_cuda_kernels(device)
    norm = rmsnorm.RMSNorm(128, cast="llama", device=device, dtype=torch.float16)
    compiled = torch.compile(norm, fullgraph=True, dynamic=True)
    for rows in (3, 17, 64):
        x = torch.randn(rows, 128, device=device, dtype=torch.float16)
        torch.testing.assert_close(compiled(x), norm(x), rtol=0, atol=0)

    def in_place(qkv, w):  # QK-norm on a slice of a fused buffer, functionalised by compile
        k = qkv[:, 128:256].view(-1, 2, 64)
        rmsnorm.rms_norm_(k, w)
        return qkv * 1

    w = torch.rand(64, device=device) + 0.5
    qkv = torch.randn(5, 384, device=device)
    torch.testing.assert_close(torch.compile(in_place, fullgraph=True)(qkv.clone(), w), in_place(qkv.clone(), w))


def _warm_up(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_capture_and_replay(dtype):
    require_cuda_kernels("cuda")
    shape = (64, 4096)
    x, w = make_inputs(shape, dtype, "cuda")
    dy = torch.randn_like(x)
    x_in, dy_in = x.clone(), dy.clone()
    w_in = w.clone().requires_grad_()
    x_train = x.clone().requires_grad_()

    def inference():
        return rmsnorm.rms_norm(x_in, w, 1e-6)

    def training():  # forward and backward through autograd, as in a captured training step
        y = rmsnorm.rms_norm(x_train, w_in, 1e-6)
        return (y,) + torch.autograd.grad(y, (x_train, w_in), dy_in)

    def in_place():
        return rmsnorm.rms_norm_(x_in, w, 1e-6)

    _warm_up(inference)
    _warm_up(training)
    graph_inf, graph_train = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph_inf):
        y_static = inference()
    with torch.cuda.graph(graph_train):
        train_static = training()

    for seed in (2, 3):  # new data in the static inputs, replay, compare with eager calls
        x_new, _ = make_inputs(shape, dtype, "cuda", seed=seed)
        dy_new = torch.randn_like(dy)
        x_in.copy_(x_new)
        dy_in.copy_(dy_new)
        with torch.no_grad():
            x_train.copy_(x_new)
        graph_inf.replay()
        graph_train.replay()
        torch.cuda.synchronize()
        assert torch.equal(y_static, rmsnorm.rms_norm(x_new, w, 1e-6))
        xe = x_new.clone().requires_grad_()
        we = w.clone().requires_grad_()
        ye = rmsnorm.rms_norm(xe, we, 1e-6)
        eager = (ye,) + torch.autograd.grad(ye, (xe, we), dy_new)
        for name, a, b in zip(("y", "dx", "dw"), train_static, eager):
            assert torch.equal(a, b), name

    # the in-place op captures too
    x_in.copy_(x)
    graph_inplace = torch.cuda.CUDAGraph()
    _warm_up(lambda: rmsnorm.rms_norm(x_in.clone(), w))
    with torch.cuda.graph(graph_inplace):
        in_place()
    x_in.copy_(x)
    graph_inplace.replay()
    torch.cuda.synchronize()
    assert torch.equal(x_in, rmsnorm.rms_norm(x, w, 1e-6))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_runs_on_the_current_stream_and_device():
    require_cuda_kernels("cuda")
    x, w = make_inputs((256, 1024), torch.bfloat16, "cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = rmsnorm.rms_norm(x, w)  # stream-ordered on s: no sync needed before using y on s
        z = y.float().sum()
    torch.cuda.current_stream().wait_stream(s)
    assert torch.allclose(z, rmsnorm.rms_norm(x, w).float().sum())
    if torch.cuda.device_count() > 1:
        x1, w1 = x.to("cuda:1"), w.to("cuda:1")
        assert torch.equal(rmsnorm.rms_norm(x1, w1).cpu(), rmsnorm.rms_norm(x, w).cpu())
