"""rmsnorm under torch.distributed, on 2 and 4 processes of this machine (gloo over 127.0.0.1).

- rms_norm(x_shard, w_shard, group=pg): rows split across ranks, forward and backward, against
  the unsharded op within the tolerance table;
- torch.compile (fullgraph) of the process-group path;
- DTensor: every op's sharding rules (rows sharded on a leading dimension, replicated, the
  last dimension sharded, a 2-D mesh), a sequence-parallel RMSNorm trained for a few steps;
- FSDP2: a tiny Llama patched with rmsnorm.patch, wrapped with fully_shard, trained for a few
  steps: losses and gradients against the single-process run;
- on a GPU, NCCL at world size 1: the process-group path, the DTensor rules, sequence
  parallel and FSDP2 on CUDA tensors; and a smoke run of python -m rmsnorm.bench_sharded.

Each test launches its ranks once (see _distributed.py) and checks several cases in them.
"""

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

from _distributed import NEEDS_NCCL, UNAVAILABLE, needs_nccl, run_ranks  # noqa: E402
from _support import TOL, assert_close, make_inputs, reference, run_module  # noqa: E402

if UNAVAILABLE:
    pytest.skip(UNAVAILABLE, allow_module_level=True)

import torch.distributed as dist  # noqa: E402
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor  # noqa: E402

WORLD_SIZES = [2, 4]

# The DTensor, sequence-parallel and FSDP2 tests: 2 and 4 ranks over gloo on the CPU, and on a
# GPU one rank over NCCL (the same rules, collectives and kernels on CUDA tensors).
RUNS = [pytest.param(world, "gloo", "cpu", id=f"gloo-{world}") for world in WORLD_SIZES] + [
    pytest.param(1, "nccl", "cuda", id="nccl-1", marks=NEEDS_NCCL)
]


def _grads(fn, x, w, dy):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_() if w is not None else None
    y = fn(x, w)
    grads = torch.autograd.grad(y, [t for t in (x, w) if t is not None], dy)
    return y.detach(), grads[0], (grads[1] if w is not None else None)


# ---------------------------------------------------------------------------------------
# Rows split across the ranks of a process group
# ---------------------------------------------------------------------------------------

# (dtype, cols, cast, offset, uneven widths)
_GROUP_CASES = [
    (torch.float32, 1024, "fp32", 0.0, False),
    (torch.bfloat16, 1000, "llama", 0.0, True),
    (torch.float16, 512, "fp32", 1.0, False),
    (torch.float64, 300, "fp32", 0.0, True),
]


def _group_body(rank, world):
    out = []
    for dtype, n, cast, offset, uneven in _GROUP_CASES:
        x, w = make_inputs((3, 5, n), dtype, "cpu")  # the same full tensors on every rank
        dy = make_inputs((3, 5, n), dtype, "cpu", seed=1)[0]
        # Uneven: rank r holds r + 1 parts of a split in world * (world + 1) / 2 parts.
        parts = [r + 1 for r in range(world)] if uneven else [1] * world
        bounds = [n * sum(parts[:r]) // sum(parts) for r in range(world + 1)]
        a, b = bounds[rank], bounds[rank + 1]
        full_cols = n if uneven else None  # equal widths: the default, x.shape[-1] * world

        def fn(xs, ws):
            return rmsnorm.rms_norm(xs, ws, 1e-6, offset=offset, cast=cast, group=dist.group.WORLD, full_cols=full_cols)

        out.append(_grads(fn, x[..., a:b], w[a:b], dy[..., a:b]))
    return out


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_rows_split_across_a_process_group(world):
    ranks = run_ranks(_group_body, world)
    for i, (dtype, n, cast, offset, _) in enumerate(_GROUP_CASES):
        x, w = make_inputs((3, 5, n), dtype, "cpu")
        dy = make_inputs((3, 5, n), dtype, "cpu", seed=1)[0]
        y, dx, dw = (torch.cat([r[i][k] for r in ranks], dim=-1) for k in range(3))
        # Against float64 with the tolerance table (the llama cast against the library's own
        # unsharded op: the same roundings, so the table's dtype tolerance holds).
        want = rmsnorm.rms_norm(x, w, 1e-6, cast=cast) if cast == "llama" else reference(x, w, 1e-6, offset)
        assert_close(y, want, dtype, what=f"y {dtype} {cast}")
        _, dx64, dw64 = _grads(lambda x, w: reference(x, w, 1e-6, offset), x.double(), w.double(), dy.double())
        assert_close(dx, dx64, dtype, scale=dx64.abs().max().item(), what=f"dx {dtype}")
        assert_close(dw, dw64, w.dtype, scale=dw64.abs().max().item(), what=f"dw {dtype}")


def _compile_body(rank, world):
    x, w = make_inputs((6, 256), torch.float32, "cpu")
    dy = make_inputs((6, 256), torch.float32, "cpu", seed=1)[0]
    cols = 256 // world
    a = rank * cols

    def fn(xs, ws):
        return rmsnorm.rms_norm(xs, ws, 1e-6, group=dist.group.WORLD)

    args = (x[:, a : a + cols], w[a : a + cols], dy[:, a : a + cols])
    return _grads(torch.compile(fn, fullgraph=True), *args), _grads(fn, *args)


def test_process_group_path_under_torch_compile():
    # The ops are opaque to the compiler and the all-reduces are traced: the same bytes as eager.
    for compiled, eager in run_ranks(_compile_body, 2):
        for got, want in zip(compiled, eager):
            assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------
# DTensor
# ---------------------------------------------------------------------------------------


def _dtensor_body(rank, world, device):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device, (world,))
    x, w = make_inputs((4, 6, 256), torch.float32, device)
    dy = make_inputs((4, 6, 256), torch.float32, device, seed=1)[0]
    report = {}
    for placement in (Shard(0), Shard(1), Replicate(), Shard(2)):
        xd = distribute_tensor(x, mesh, [placement]).requires_grad_()
        wd = distribute_tensor(w, mesh, [Replicate()]).requires_grad_()
        y = rmsnorm.rms_norm(xd, wd, 1e-6)
        y.backward(distribute_tensor(dy, mesh, [placement]))
        report[str(placement)] = {
            "placements": (y.placements, xd.grad.placements, wd.grad.placements),
            "y": y.full_tensor(),
            "dx": xd.grad.full_tensor(),
            "dw": wd.grad.full_tensor(),
        }
    # The plain ops directly (no wrapper): inference op, rstd, in place.
    xd = distribute_tensor(x, mesh, [Shard(1)])
    wd = distribute_tensor(w, mesh, [Replicate()])
    y, rstd = torch.ops.rmsnorm.rms_norm_fwd(xd, wd, 1e-6, 0.0, "fp32")
    report["rms_norm_fwd"] = (y.placements, rstd.placements, y.full_tensor(), rstd.full_tensor())
    y = torch.ops.rmsnorm.rms_norm(xd, wd, 1e-6, 0.0, "llama")
    report["rms_norm"] = (y.placements, y.full_tensor())
    xi = distribute_tensor(x, mesh, [Shard(0)])
    rmsnorm.rms_norm_(xi, wd, 1e-6)
    report["rms_norm_"] = (xi.placements, xi.full_tensor())
    xi = distribute_tensor(x, mesh, [Shard(2)])
    rmsnorm.rms_norm_(xi, distribute_tensor(w, mesh, [Shard(0)]), 1e-6)
    report["rms_norm_ last dim"] = (xi.placements, xi.full_tensor())
    # The backward op: dw is a pending sum over the ranks' rows.
    _, rstd = torch.ops.rmsnorm.rms_norm_fwd(x, w, 1e-6, 0.0, "fp32")
    dx, dw = torch.ops.rmsnorm.rms_norm_bwd(
        distribute_tensor(dy, mesh, [Shard(0)]), distribute_tensor(x, mesh, [Shard(0)]), wd,
        distribute_tensor(rstd, mesh, [Shard(0)]), 1e-6, 0.0, True,
    )  # fmt: skip
    report["rms_norm_bwd"] = (dx.placements, dw.placements, dx.full_tensor(), dw.full_tensor())
    # A plain op on a last-dimension shard has no rule: DTensor gathers the rows (correct).
    y = torch.ops.rmsnorm.rms_norm(distribute_tensor(x, mesh, [Shard(2)]), wd, 1e-6, 0.0, "fp32")
    report["rms_norm gathered"] = y.full_tensor()
    if world == 4:
        # A 2 x 2 mesh: rows over one mesh dimension, columns over the other. The sums are
        # pending on the second only, and its all-reduce runs over that mesh dimension.
        mesh2 = init_device_mesh(device, (2, 2))
        xd = distribute_tensor(x, mesh2, [Shard(0), Shard(2)]).requires_grad_()
        wd = distribute_tensor(w, mesh2, [Replicate(), Replicate()]).requires_grad_()
        y = rmsnorm.rms_norm(xd, wd, 1e-6)
        y.backward(distribute_tensor(dy, mesh2, [Shard(0), Shard(2)]))
        report["2-D mesh"] = (y.placements, y.full_tensor(), xd.grad.full_tensor(), wd.grad.full_tensor())
    return report


@pytest.mark.parametrize(("world", "backend", "device"), RUNS)
def test_dtensor_sharding_rules(world, backend, device):
    reports = run_ranks(_dtensor_body, world, args=(device,), backend=backend)
    x, w = make_inputs((4, 6, 256), torch.float32, device)
    dy = make_inputs((4, 6, 256), torch.float32, device, seed=1)[0]
    y_ref, dx_ref, dw_ref = _grads(lambda x, w: rmsnorm.rms_norm(x, w, 1e-6), x, w, dy)
    for report in reports:
        for name, expected in (
            ("S(0)", (Shard(0), Shard(0), Partial())),
            ("S(1)", (Shard(1), Shard(1), Partial())),
            ("R", (Replicate(), Replicate(), Replicate())),
            ("S(2)", (Shard(2), Shard(2), Replicate())),
        ):
            r = report[name]
            assert tuple(p[0] for p in r["placements"]) == expected, (name, r["placements"])
            if name != "S(2)":
                # Rows normalised where they are: every row's bytes are the unsharded op's.
                assert torch.equal(r["y"], y_ref), name
                assert torch.equal(r["dx"], dx_ref), name
            else:
                assert_close(r["y"], y_ref, what=f"{name} y")
                assert_close(r["dx"], dx_ref, scale=dx_ref.abs().max().item(), what=f"{name} dx")
            # dw: the ranks' partial sums added by DTensor in another order.
            assert_close(r["dw"], dw_ref, scale=dw_ref.abs().max().item(), what=f"{name} dw")
        y_pl, rstd_pl, y, rstd = report["rms_norm_fwd"]
        assert (y_pl, rstd_pl) == ((Shard(1),), (Shard(1),))
        want_y, want_rstd = torch.ops.rmsnorm.rms_norm_fwd(x, w, 1e-6, 0.0, "fp32")
        assert torch.equal(y, want_y) and torch.equal(rstd, want_rstd)
        assert report["rms_norm"][0] == (Shard(1),)
        assert torch.equal(report["rms_norm"][1], torch.ops.rmsnorm.rms_norm(x, w, 1e-6, 0.0, "llama"))
        assert report["rms_norm_"][0] == (Shard(0),) and torch.equal(report["rms_norm_"][1], y_ref)
        assert report["rms_norm_ last dim"][0] == (Shard(2),)
        assert_close(report["rms_norm_ last dim"][1], y_ref, what="in place, last dim")
        dx_pl, dw_pl, dx, dw = report["rms_norm_bwd"]
        assert (dx_pl, dw_pl) == ((Shard(0),), (Partial(),))
        assert torch.equal(dx, dx_ref)
        assert_close(dw, dw_ref, scale=dw_ref.abs().max().item(), what="rms_norm_bwd dw")
        assert torch.equal(report["rms_norm gathered"], y_ref)
        if world == 4:
            placements, y, dx, dw = report["2-D mesh"]
            assert placements == (Shard(0), Shard(2))
            assert_close(y, y_ref, what="2-D mesh y")
            assert_close(dx, dx_ref, scale=dx_ref.abs().max().item(), what="2-D mesh dx")
            assert_close(dw, dw_ref, scale=dw_ref.abs().max().item(), what="2-D mesh dw")


# ---------------------------------------------------------------------------------------
# Sequence parallel: an RMSNorm module whose rows (tokens) are split over the ranks
# ---------------------------------------------------------------------------------------

_SP_STEPS = 3


def _sp_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 96, generator=g)
    target = torch.randn(2, 8, 96, generator=g)
    return x, target


def _sp_train(norm, x, target, lr=0.5):
    """A few SGD steps of the norm's weight on a squared error; the losses and final weight."""
    losses = []
    opt = torch.optim.SGD(norm.parameters(), lr=lr)
    for _ in range(_SP_STEPS):
        y = norm(x)
        loss = ((y - target) ** 2).mean()
        loss.backward()
        losses.append(loss.detach())
        opt.step()
        opt.zero_grad()
    return losses


def _sp_norm(device):
    norm = rmsnorm.RMSNorm(96, eps=1e-6, device=device)
    with torch.no_grad():
        norm.weight.copy_(make_inputs((96,), torch.float32, device)[1])
    return norm


def _sp_body(rank, world, device):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import SequenceParallel, parallelize_module

    mesh = init_device_mesh(device, (world,))
    x, target = (t.to(device) for t in _sp_data())
    norm = _sp_norm(device)
    # The weight becomes a replicated DTensor; inputs are this rank's tokens (dim 1), and the
    # output stays a DTensor sharded the same way.
    parallelize_module(norm, mesh, SequenceParallel())
    seq = x.shape[1] // world
    xs = x[:, rank * seq : (rank + 1) * seq]
    ts = DTensor.from_local(target[:, rank * seq : (rank + 1) * seq], mesh, [Shard(1)])
    losses = [loss.full_tensor() for loss in _sp_train(norm, xs, ts)]
    return losses, norm.weight.full_tensor().detach()


@pytest.mark.parametrize(("world", "backend", "device"), RUNS)
def test_sequence_parallel_training(world, backend, device):
    ranks = run_ranks(_sp_body, world, args=(device,), backend=backend)
    x, target = (t.to(device) for t in _sp_data())
    norm = _sp_norm(device)
    losses = [loss.item() for loss in _sp_train(norm, x, target)]
    for got_losses, got_weight in ranks:
        # The outputs are the unsharded op's bytes (rows normalised where they are); the loss
        # and the weight's gradient are sums over ranks in another order: float32 roundings.
        assert [loss.item() for loss in got_losses] == pytest.approx(losses, rel=1e-6)
        torch.testing.assert_close(got_weight, norm.weight.detach(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# FSDP2: a tiny Llama, patched, fully sharded, trained on each rank's share of the batch
# ---------------------------------------------------------------------------------------

_FSDP_STEPS = 3
_BATCH, _SEQ = 8, 16


def _tiny_llama():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_SEQ,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)  # the same initial weights in every process
    model = transformers.LlamaForCausalLM(config)
    assert rmsnorm.patch(model) == 2 * 2 + 1  # two per layer, and the final norm
    return model


def _tokens():
    return torch.randint(0, 128, (_BATCH, _SEQ), generator=torch.Generator().manual_seed(5))


def _train_llama(model, tokens, first_norm_out):
    """SGD steps; the losses, the first step's gradients, and the first norm's output."""
    model.model.layers[0].input_layernorm.register_forward_hook(
        lambda module, args, out: first_norm_out.append(out.detach().clone()) if not first_norm_out else None
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, grads = [], None
    for step in range(_FSDP_STEPS):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        losses.append(loss.detach())
        if step == 0:
            grads = {
                n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
                for n, p in model.named_parameters()
            }
        opt.step()
        opt.zero_grad()
    return losses, grads


def _fsdp_body(rank, world, device):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device, (world,))
    model = _tiny_llama().to(device)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    rows = _BATCH // world
    first_norm_out = []
    losses, grads = _train_llama(model, _tokens()[rank * rows : (rank + 1) * rows].to(device), first_norm_out)
    # Each rank's loss is its own rows' mean: the batch's is their mean (equal shares).
    for loss in losses:
        dist.all_reduce(loss)
        loss /= world
    return losses, (grads if rank == 0 else None), first_norm_out[0]


@pytest.mark.parametrize(("world", "backend", "device"), RUNS)
def test_fsdp2_llama_training(world, backend, device):
    ranks = run_ranks(_fsdp_body, world, args=(device,), backend=backend)
    first_norm_out = []
    losses, grads = _train_llama(_tiny_llama().to(device), _tokens().to(device), first_norm_out)
    rows = _BATCH // world
    for rank, (got_losses, _, got_norm_out) in enumerate(ranks):
        # The first norm sees the embeddings of this rank's rows, which are the same bytes as in
        # the single-process batch: a row's result does not depend on the batch around it.
        assert torch.equal(got_norm_out, first_norm_out[0][rank * rows : (rank + 1) * rows])
        # Later layers go through matrix products of another batch size and gradients summed
        # over ranks in another order: float32 roundings, growing over the steps.
        torch.testing.assert_close(torch.stack(got_losses), torch.stack(losses), rtol=1e-5, atol=0)
    got_grads = ranks[0][1]
    assert got_grads.keys() == grads.keys()
    for name, g in grads.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)


# ---------------------------------------------------------------------------------------
# On a GPU: NCCL at world size 1, and the benchmark's own check
# ---------------------------------------------------------------------------------------


def _nccl_body(rank, world):
    out = []
    for dtype in (torch.bfloat16, torch.float32):
        x, w = make_inputs((64, 4096), dtype, "cuda")
        dy = make_inputs((64, 4096), dtype, "cuda", seed=1)[0]
        got = _grads(lambda x, w: rmsnorm.rms_norm(x, w, 1e-6, group=dist.group.WORLD), x, w, dy)
        want = _grads(lambda x, w: rmsnorm.rms_norm(x, w, 1e-6), x, w, dy)
        out.append([t.cpu() for t in got + want])
    return out


@needs_nccl
def test_nccl_world_size_1():
    (result,) = run_ranks(_nccl_body, 1, backend="nccl")
    for y, dx, dw, y_want, dx_want, dw_want in result:
        # One rank holds whole rows: the steps compute the plain op (its bytes on the CPU; on CUDA
        # the partial sums have their own order, so within the tolerance).
        assert_close(y, y_want, what="y")
        assert_close(dx, dx_want, scale=dx_want.abs().max().item(), what="dx")
        assert_close(dw, dw_want, scale=dw_want.abs().max().item(), what="dw")


def test_bench_sharded_smoke():
    """python -m rmsnorm.bench_sharded checks, then times, on this machine's device at world size 1."""
    out = run_module("rmsnorm.bench_sharded", "--sizes", "64x1024", "--reps", "2", timeout=120)
    assert "64x1024" in out
    assert "Correctness check PASSED" in out, out
