"""rmsnorm.RMSNorm as a drop-in module, and rmsnorm.patch on tiny Hugging Face models."""

import copy

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

from torch import nn  # noqa: E402

from _support import DEVICES, HAS_CUDA, assert_close, hf_llama, make_inputs, reference, require_cuda_kernels  # noqa: E402

# ---------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------


def test_module_init_state_dict_and_repr():
    norm = rmsnorm.RMSNorm(64)
    assert torch.equal(norm.weight, torch.ones(64)) and norm.eps == 1e-6 and norm.variance_epsilon == 1e-6
    assert torch.equal(rmsnorm.RMSNorm(64, offset=1.0).weight, torch.zeros(64))  # Gemma: 1 + w == 1
    assert list(norm.state_dict()) == ["weight"]
    # the same state-dict keys as torch.nn.RMSNorm: load both ways
    theirs = nn.RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        theirs.weight.normal_()
    norm.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(norm.state_dict())
    assert torch.equal(norm.weight, theirs.weight)
    assert rmsnorm.RMSNorm((64,)).hidden_size == 64
    assert "cast='llama'" in repr(rmsnorm.RMSNorm(8, cast="llama"))
    m = rmsnorm.RMSNorm(8, dtype=torch.bfloat16)
    assert m.weight.dtype == torch.bfloat16 and m.weight.requires_grad
    with pytest.raises(ValueError, match="cast"):
        rmsnorm.RMSNorm(8, cast="fp16")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_matches_torch_rms_norm(device, dtype):
    require_cuda_kernels(device)
    x, w = make_inputs((3, 5, 256), dtype, device)
    theirs = nn.RMSNorm(256, eps=None, device=device, dtype=dtype)  # eps None: finfo(dtype).eps
    ours = rmsnorm.RMSNorm(256, eps=None, device=device, dtype=dtype)
    with torch.no_grad():
        theirs.weight.copy_(w)
        ours.weight.copy_(w)
    assert_close(ours(x), theirs(x), dtype, what="vs nn.RMSNorm")
    assert_close(ours(x), reference(x, w, torch.finfo(dtype).eps), what="vs float64")


def test_patch_plain_torch_model():
    model = nn.Sequential(nn.Linear(32, 32), nn.RMSNorm(32, eps=1e-5), nn.Sequential(nn.RMSNorm(32)))
    x = torch.randn(4, 32)
    want = model(x)
    norm_weight = model[1].weight
    assert rmsnorm.patch(model) == 2
    assert isinstance(model[1], rmsnorm.RMSNorm) and isinstance(model[2][0], rmsnorm.RMSNorm)
    assert model[1].weight is norm_weight and model[1].eps == 1e-5
    assert_close(model(x), want)
    assert rmsnorm.patch(model) == 0  # nothing left to patch


def test_patch_leaves_look_alikes_alone():
    class FakeRMSNorm(nn.Module):  # looks like one, computes something else
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(16))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return x - x.mean(-1, keepdim=True)

    model = nn.Sequential(FakeRMSNorm())
    with pytest.warns(UserWarning, match="left FakeRMSNorm"):
        assert rmsnorm.patch(model) == 0
    assert isinstance(model[0], FakeRMSNorm)


# ---------------------------------------------------------------------------------------
# Hugging Face models (tiny configs built here, random weights, no downloads)
# ---------------------------------------------------------------------------------------

try:
    import transformers
except ImportError:
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers is not installed")

_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)


def _tiny(kind):
    cfg = {
        "llama": lambda: transformers.LlamaConfig(**_COMMON),
        "qwen3": lambda: transformers.Qwen3Config(**_COMMON, head_dim=16),
        "gemma": lambda: transformers.GemmaConfig(**_COMMON, head_dim=16),
        "gemma2": lambda: transformers.Gemma2Config(**_COMMON, head_dim=16),  # test_fusion's
    }[kind]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    # Random init leaves norm weights at 1 (Llama) or 0 (Gemma); perturb them so that the
    # weight, and Gemma's 1 + w, matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


# RMSNorm modules of the tiny models: 2 per layer + the final norm; Qwen3 adds q_norm and k_norm.
_EXPECTED = {"llama": 2 * 2 + 1, "qwen3": 4 * 2 + 1, "gemma": 2 * 2 + 1}

# Logits and gradients of patched vs unpatched models, max |difference| / max |reference|.
# Patching changes only the order of the fp32 sums in each norm (and, in the backward, the
# formula's roundings): in float32 the two agree to ~1e-6 (measured: <= 1e-6 for all three
# models), hence 1e-5. bf16 runs round every activation to 8 bits, and two layers amplify a
# 1-ulp difference in a norm's output: a few bf16 ulps (2^-8 each) of the largest value.
_MODEL_TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-2}


def _max_rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


_MODEL_CASES = [
    pytest.param(kind, "cpu", torch.float32, id=f"{kind}-cpu-fp32") for kind in ("llama", "qwen3", "gemma")
] + [
    pytest.param(
        kind,
        "cuda",
        torch.bfloat16,
        id=f"{kind}-cuda-bf16",
        marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"),
    )
    for kind in ("llama", "qwen3", "gemma")
]


@needs_transformers
@pytest.mark.parametrize("kind,device,dtype", _MODEL_CASES)
def test_patched_model_logits_and_gradients(kind, device, dtype):
    require_cuda_kernels(device)
    ref = _tiny(kind).to(device=device, dtype=dtype)
    model = copy.deepcopy(ref)
    keys = list(model.state_dict())
    first = model.model.layers[0].input_layernorm
    weight, eps = first.weight, getattr(first, "variance_epsilon", getattr(first, "eps", None))

    assert rmsnorm.patch(model) == _EXPECTED[kind]
    patched = model.model.layers[0].input_layernorm
    assert isinstance(patched, rmsnorm.RMSNorm)
    assert patched.weight is weight and patched.eps == eps  # same Parameter object, same eps
    assert (patched.offset, patched.cast) == ((1.0, "fp32") if kind == "gemma" else (0.0, "llama"))
    if kind == "qwen3":
        assert isinstance(model.model.layers[0].self_attn.q_norm, rmsnorm.RMSNorm)
        assert isinstance(model.model.layers[0].self_attn.k_norm, rmsnorm.RMSNorm)
    assert list(model.state_dict()) == keys

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, _COMMON["vocab_size"], (2, 24), generator=g).to(device)
    with torch.no_grad():
        want, got = ref(ids).logits, model(ids).logits
    assert _max_rel(got, want) <= _MODEL_TOL[dtype], f"logits differ by {_max_rel(got, want):.3g}"

    # a training step: the loss's gradients with respect to every parameter
    ref(ids, labels=ids).loss.backward()
    model(ids, labels=ids).loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        want_grad = ref_grads[name].grad
        assert p.grad is not None, name
        assert _max_rel(p.grad, want_grad) <= _MODEL_TOL[dtype], f"{name}: {_max_rel(p.grad, want_grad):.3g}"


@needs_transformers
@pytest.mark.parametrize("device", DEVICES)
def test_patched_llama_norm_is_bit_compatible(device):
    """cast="llama" reproduces LlamaRMSNorm's roundings (up to the fp32 sum order)."""
    require_cuda_kernels(device)
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    hf = LlamaRMSNorm(512, eps=1e-6).to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        hf.weight.normal_(1.0, 0.1)
    model = nn.Sequential(copy.deepcopy(hf))
    assert rmsnorm.patch(model) == 1
    x = make_inputs((64, 512), torch.bfloat16, device)[0]
    got, want = model(x), hf(x)
    assert torch.equal(want, hf_llama(x, hf.weight, 1e-6))
    assert_close(got, want, what="patched LlamaRMSNorm")
    # "up to the sum order": nearly every element is bit-identical
    assert (got == want).float().mean().item() > 0.99
