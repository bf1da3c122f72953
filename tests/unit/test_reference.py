"""The reference BatchNorm against torch.nn.BatchNorm1d/2d/3d and F.batch_norm.

Tolerances: float64 to 1e-10 (both sides are exact formulas evaluated in double; differences are
rounding of O(N) reductions, ~1e-15 here), float32 at assert_close's defaults.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bncheck
from bncheck.errors import InvalidArgument, InvalidArgumentType
from bncheck.reference import InvalidInput

SHAPES = [(6, 3), (5, 3, 7), (4, 3, 5, 5), (3, 3, 2, 3, 4)]
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
GRAD_MODES = {
    "grad": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {}


def pair(dtype: torch.dtype, ndim: int, **kwargs: object) -> tuple[nn.Module, nn.Module]:
    ours = bncheck.BatchNorm(3, **kwargs).to(dtype)  # type: ignore[arg-type]
    theirs = TORCH_BN[ndim](3, **kwargs).to(dtype)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if ours.affine:
            ours.weight.copy_(torch.rand(3, generator=gen, dtype=dtype) + 0.5)
            ours.bias.copy_(torch.randn(3, generator=gen, dtype=dtype))
        if ours.track_running_stats:
            ours.running_mean.copy_(torch.randn(3, generator=gen, dtype=dtype))
            ours.running_var.copy_(torch.rand(3, generator=gen, dtype=dtype) + 0.5)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def assert_same_state(ours: nn.Module, theirs: nn.Module, dtype: torch.dtype) -> None:
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert sd_ours.keys() == sd_theirs.keys()
    for key in sd_ours:
        torch.testing.assert_close(sd_ours[key], sd_theirs[key], **tol(dtype), msg=key)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("grad_mode", list(GRAD_MODES))
def test_module_matches_torch(shape, dtype, training, grad_mode):
    ours, theirs = pair(dtype, len(shape))
    ours.train(training)
    theirs.train(training)
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 2
    for _ in range(2):  # two steps: the second one starts from updated statistics
        with GRAD_MODES[grad_mode]():
            x_ours = x.clone().requires_grad_(grad_mode == "grad")
            x_theirs = x.clone().requires_grad_(grad_mode == "grad")
            y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
        torch.testing.assert_close(y_ours, y_theirs, **tol(dtype))
        assert_same_state(ours, theirs, dtype)
    if grad_mode == "grad":
        g = torch.randn(shape, generator=gen, dtype=dtype)
        y_ours.backward(g)
        y_theirs.backward(g)
        torch.testing.assert_close(x_ours.grad, x_theirs.grad, **tol(dtype))
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **tol(dtype))
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **tol(dtype))


@pytest.mark.parametrize(
    "kwargs",
    [{"momentum": None}, {"momentum": 0.5}, {"affine": False}, {"track_running_stats": False},
     {"eps": 1e-3}, {"affine": False, "track_running_stats": False}],
    ids=str,
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_configurations_match_torch(kwargs, training):
    ours, theirs = pair(torch.float64, 4, **kwargs)
    gen = torch.Generator().manual_seed(3)
    for step in range(3):
        ours.train(training or step == 0)
        theirs.train(training or step == 0)
        x = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x), **tol(torch.float64))
        assert_same_state(ours, theirs, torch.float64)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize(
    "training,with_stats,with_affine",
    # eval without running statistics is an error, tested in test_errors
    [c for c in itertools.product([True, False], repeat=3) if c[0] or c[1]],
)
def test_functional_matches_torch(shape, training, with_stats, with_affine):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    rm, rv = torch.randn(3, dtype=torch.float64, generator=gen), torch.rand(3, dtype=torch.float64)
    w, b = torch.randn(3, dtype=torch.float64, generator=gen), torch.randn(3, dtype=torch.float64)
    stats = [(rm.clone(), rv.clone()) if with_stats else (None, None) for _ in range(2)]
    affine = (w, b) if with_affine else (None, None)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = bncheck.batch_norm(x1, *stats[0], *affine, training, 0.3, 1e-4)
    y2 = F.batch_norm(x2, *stats[1], *affine, training, 0.3, 1e-4)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    if with_stats:
        torch.testing.assert_close(stats[0], stats[1], rtol=1e-10, atol=1e-10)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_reduced_precision_computes_in_float32(dtype, training):
    ours, theirs = pair(torch.float32, 4)  # float32 module, reduced-precision input
    ours.train(training)
    theirs.train(training)
    x = (torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 4 + 100).to(dtype)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == dtype
    assert ours.running_mean.dtype == torch.float32
    assert torch.isfinite(y_ours).all()
    # Both compute in float32 and round once to `dtype`: at most one ulp of `dtype` apart.
    torch.testing.assert_close(y_ours, y_theirs)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_channels_last_is_preserved():
    x = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    y = bncheck.BatchNorm(3)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, nn.BatchNorm2d(3)(x))


def test_running_stats_never_reach_autograd():
    bn = bncheck.BatchNorm(3)
    x = torch.randn(4, 3, requires_grad=True)
    bn(x).sum().backward()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        buf = getattr(bn, name)
        assert not buf.requires_grad and buf.grad_fn is None, name
    assert {n for n, _ in bn.named_buffers()} == {"running_mean", "running_var",
                                                  "num_batches_tracked"}


# --- the seed notebook's defects are absent ------------------------------------------------------

def test_train_mode_under_no_grad_equals_grad_enabled():
    """Seed defect: mode chosen by torch.is_grad_enabled()."""
    a, b = bncheck.BatchNorm(3), bncheck.BatchNorm(3)
    x = torch.randn(6, 3, 4, 4) * 2 + 1
    y_grad = a(x.requires_grad_())
    with torch.no_grad():
        y_nograd = b(x)
    torch.testing.assert_close(y_grad, y_nograd)
    torch.testing.assert_close(a.running_mean, b.running_mean)
    torch.testing.assert_close(a.running_var, b.running_var)
    assert a.running_mean.abs().sum() > 0  # the update happened in both


def test_eval_mode_with_grad_enabled_uses_running_stats():
    bn = bncheck.BatchNorm(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 3.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 9.0]))
    bn.eval()
    x = torch.randn(5, 3, requires_grad=True)
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(bn(x), expected)
    assert int(bn.num_batches_tracked) == 0


def test_training_normalizes_with_batch_statistics():
    """Seed defect: X_hat = (X - mean) / sqrt(moving_var + eps)."""
    bn = bncheck.BatchNorm(3).double()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * torch.tensor([10.0, 0.1, 3.0], dtype=torch.float64) + 5
    y = bn(x)
    batch_var = x.var(0, unbiased=False)
    # Normalized with batch statistics: zero mean, variance var / (var + eps) exactly (float64).
    torch.testing.assert_close(y.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), batch_var / (batch_var + bn.eps),
                               atol=1e-12, rtol=0)


def test_running_var_moves_toward_batch_variance():
    """Seed defect: moving_var = momentum * moving_var + (1 - momentum) * moving_var."""
    bn = bncheck.BatchNorm(2, momentum=0.5)
    x = torch.tensor([[0.0, 10.0], [4.0, 30.0]])
    bn(x)
    unbiased = x.var(0, unbiased=True)
    torch.testing.assert_close(bn.running_var, 0.5 * torch.ones(2) + 0.5 * unbiased)
    torch.testing.assert_close(bn.running_mean, 0.5 * x.mean(0))


def test_state_dict_round_trip_with_torch():
    ours = bncheck.BatchNorm(4)
    ours(torch.randn(8, 4, 3, 3) * 2 + 1)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.normal_()
    theirs = nn.BatchNorm2d(4)
    theirs.load_state_dict(ours.state_dict())
    back = bncheck.BatchNorm(4)
    back.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 3, 3)
    y = ours.eval()(x)
    torch.testing.assert_close(theirs.eval()(x), y)
    torch.testing.assert_close(back.eval()(x), y)
    assert int(back.num_batches_tracked) == 1


def test_old_checkpoint_without_num_batches_tracked_loads():
    sd = nn.BatchNorm2d(2).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    bn = bncheck.BatchNorm(2)
    bn.load_state_dict(sd)
    assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("cls,ok,bad", [
    (bncheck.BatchNorm1d, [(2, 3), (2, 3, 4)], (2, 3, 4, 4)),
    (bncheck.BatchNorm2d, [(2, 3, 4, 4)], (2, 3)),
    (bncheck.BatchNorm3d, [(2, 3, 2, 2, 2)], (2, 3, 4, 4)),
])
def test_dimension_specific_classes(cls, ok, bad):
    bn = cls(3)
    for shape in ok:
        bn(torch.randn(shape))
    with pytest.raises(InvalidArgument, match=rf"expected .*D input \(got {len(bad)}D input\)"):
        bn(torch.randn(bad))


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,error,match", [
    (lambda: bncheck.BatchNorm(3)(torch.randn(3)), InvalidArgument,
     r"Expected input with at least 2 dims \(N, C, \*\).*received input of shape \(3,\) "
     r"\(1 dims\)"),
    (lambda: bncheck.BatchNorm(3)(torch.randn(2, 4)), InvalidInput,
     r"running_mean should contain 4 elements not 3"),
    (lambda: bncheck.BatchNorm(3)(torch.ones(2, 3, dtype=torch.long)), InvalidArgumentType,
     r"floating dtype.*received input of dtype torch.int64"),
    (lambda: bncheck.BatchNorm(3)([[1.0, 2.0, 3.0]]), InvalidArgumentType,
     r"Expected input to be a torch.Tensor"),
    (lambda: bncheck.BatchNorm(3)(torch.randn(1, 3)), InvalidArgument,
     r"Expected more than 1 value per channel when training, got input size "
     r"torch.Size\(\[1, 3\]\)"),
    (lambda: bncheck.BatchNorm(3)(torch.randn(1, 3, 1, 1)), InvalidArgument,
     r"Expected more than 1 value per channel"),
    (lambda: bncheck.BatchNorm(-1), InvalidInput, r"num_features=-1"),
    (lambda: bncheck.BatchNorm(2.5), InvalidArgumentType, r"num_features"),
    (lambda: bncheck.BatchNorm(3, eps=-1e-5).eval()(torch.randn(4, 3)), InvalidArgument,
     r"batch_norm eps must be non-negative, but got -1e-05"),
    (lambda: bncheck.BatchNorm(3, eps=0.0)(torch.randn(4, 3)), InvalidArgument,
     r"batch_norm eps must be positive during training, but got 0.0"),
    (lambda: bncheck.batch_norm(torch.randn(4, 3), None, None, training=True, eps=0.0),
     InvalidArgument, r"batch_norm eps must be positive during training, but got 0.0"),
    (lambda: bncheck.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), eps=-1.0),
     InvalidArgument, r"batch_norm eps must be non-negative, but got -1.0"),
    (lambda: bncheck.batch_norm(torch.randn(2, 3), None, None), InvalidInput,
     r"running_mean must be defined in evaluation mode"),
    (lambda: bncheck.batch_norm(torch.randn(2, 3), torch.zeros(4), torch.ones(4)),
     InvalidInput, r"running_mean should contain 3 elements not 4 .*received running_mean "
     r"of shape \(4,\)"),
    (lambda: bncheck.batch_norm(torch.randn(4, 3), torch.zeros(3, dtype=torch.long),
                                torch.ones(3), training=True), InvalidArgumentType,
     r"Expected running_mean to have a floating dtype, received running_mean of dtype "
     r"torch.int64"),
    (lambda: bncheck.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3),
                                weight=torch.ones(3, dtype=torch.complex64)), InvalidArgumentType,
     r"Expected weight to have a floating dtype"),
    (lambda: bncheck.batch_norm(torch.randn(2, 3), None, None, training=True, momentum=None),
     InvalidArgumentType, r"momentum=None"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_errors_are_catchable_the_usual_way():
    with pytest.raises(ValueError):
        bncheck.BatchNorm(3)(torch.randn(1, 3))
    with pytest.raises(TypeError):
        bncheck.BatchNorm(3)(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(bncheck.BNCheckError):
        bncheck.BatchNorm(3)(torch.randn(2, 2))


def test_eval_batch_of_one_is_fine():
    bn = bncheck.BatchNorm(3).eval()
    assert bn(torch.randn(1, 3)).shape == (1, 3)


# --- torch 2.13 drop-in: bias=False, empty batches, eps=0 ---------------------------------------

@pytest.mark.parametrize("cls,theirs,shape", [
    (bncheck.BatchNorm1d, nn.BatchNorm1d, (4, 3)),
    (bncheck.BatchNorm2d, nn.BatchNorm2d, (4, 3, 2, 2)),
    (bncheck.BatchNorm3d, nn.BatchNorm3d, (4, 3, 2, 2, 2))])
def test_bias_false_is_torchs(cls, theirs, shape):
    ours, ref = cls(3, bias=False), theirs(3, bias=False)
    assert ours.bias is None and isinstance(ours.weight, nn.Parameter)
    assert list(ours.state_dict()) == list(ref.state_dict())  # no "bias" key
    assert repr(ours).removeprefix("BatchNorm") == repr(ref).removeprefix("BatchNorm")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape) * 2 + 1
    torch.testing.assert_close(ours(x), ref(x))
    assert cls(3, affine=False, bias=False).weight is None


@pytest.mark.parametrize("shape", [(0, 5, 2, 2), (0, 5), (3, 5, 0), (0, 5, 2, 2, 2)], ids=str)
@pytest.mark.parametrize("momentum", [0.3, None])
def test_empty_training_batch_is_torchs(shape, momentum):
    ours = bncheck.BatchNorm(5, momentum=momentum)
    ref = TORCH_BN[len(shape)](5, momentum=momentum)
    with torch.no_grad():
        ours.running_mean.fill_(0.5)
    ref.load_state_dict(ours.state_dict())
    x_ours, x_ref = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    assert y_ours.shape == y_ref.shape == shape
    y_ours.sum().backward()
    y_ref.sum().backward()
    assert x_ours.grad.shape == shape
    torch.testing.assert_close(ours.weight.grad, torch.zeros(5))  # zeros, not None, as torch's
    torch.testing.assert_close(ours.bias.grad, torch.zeros(5))
    assert_same_state(ours, ref, torch.float32)  # statistics unchanged, the batch counted
    assert int(ours.num_batches_tracked) == 1


def test_empty_batch_functional():
    rm, rv = torch.full((5,), 0.5), torch.ones(5)
    y = bncheck.batch_norm(torch.randn(0, 5, 3), rm, rv, training=True)
    assert y.shape == (0, 5, 3) and y.dtype == torch.float32
    torch.testing.assert_close(rm, torch.full((5,), 0.5))
    with pytest.raises(InvalidArgument, match="more than 1 value per channel"):
        bncheck.batch_norm(torch.randn(1, 0), None, None, training=True)  # as torch: N*L == 1


def test_eps_zero_outside_training_is_torchs():
    x, rm, rv = torch.randn(4, 3), torch.randn(3), torch.rand(3) + 0.5
    torch.testing.assert_close(bncheck.batch_norm(x, rm, rv, eps=0.0),
                               F.batch_norm(x, rm, rv, eps=0.0))
    bn = bncheck.BatchNorm(3, eps=0.0).eval()  # torch's constructor accepts it too
    torch.testing.assert_close(bn(x), nn.BatchNorm1d(3, eps=0.0).eval()(x))


# --- the fast path: analytic backward, memory, double backward ------------------------------------

@pytest.mark.parametrize("shape,channels_last", [((5, 3), False), ((3, 3, 4), False),
                                                 ((2, 3, 3, 2), False), ((2, 3, 3, 2), True),
                                                 ((2, 3, 2, 2, 2), True)], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck(shape, channels_last, affine):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last if len(shape) == 4
                 else torch.channels_last_3d)
    params = [torch.rand(3, generator=gen, dtype=torch.float64) + 0.5,
              torch.randn(3, generator=gen, dtype=torch.float64)] if affine else []
    inputs = [t.requires_grad_() for t in (x, *params)]

    def f(x, *wb):
        return bncheck.batch_norm(x, None, None, *wb, training=True)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("shape,channels_last", [((4096, 8), False), ((64, 8, 8, 8), True),
                                                 ((8, 3, 5, 5), False)], ids=str)
@pytest.mark.parametrize("wants", ["all", "weight only"])
def test_backward_without_temporaries_matches_torch(shape, channels_last, wants):
    """The backward's per-channel dot multiplies the centred input by dy in place and centres it
    again (no full-size temporary) for (N, C, L) rows and for 2-dim rows of >= 128 KiB (the first
    two cases, float64: 256 KiB); with only the weight wanted, the second centring is skipped.
    float64 against F.batch_norm to 1e-10 (see tol)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (bncheck.batch_norm, F.batch_norm):
        xs = x.clone().requires_grad_(wants == "all")
        ws, bs = w.clone().requires_grad_(), b.clone().requires_grad_()
        y = fn(xs, None, None, ws, bs, True)
        grads.append(torch.autograd.grad(y, [t for t in (xs, ws, bs) if t.requires_grad], g))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, **tol(torch.float64))


def test_memory_kept_for_backward_is_the_input():
    from bncheck.reference.bench import saved_bytes

    x = torch.randn(16, 8, 6, 6, requires_grad=True)
    w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    kept = saved_bytes(lambda: bncheck.batch_norm(x, torch.zeros(8), torch.ones(8), w, b, True))
    native = saved_bytes(lambda: F.batch_norm(x, torch.zeros(8), torch.ones(8), w, b, True))
    per_channel = 4 * 8 * 4  # weight, bias, mean, 1/std: float32 per channel
    assert kept <= x.numel() * 4 + per_channel
    assert kept <= native + 4 * 8  # native saves input, weight, mean, 1/std (bias is ours)
    # The plain formula keeps about three input-sized tensors: the check can fail.
    from bncheck.reference._kernels import formula
    assert saved_bytes(lambda: formula(x, w, b, 1e-5)[0]) > 2 * x.numel() * 4


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's compiler
def test_compiled_path_matches_torch():
    """One small case: torch.compile takes ~15-30 s here on first use (C++ codegen by gcc)."""
    pytest.importorskip("torch._inductor")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 4, 4, generator=gen) * 3 + 1
    ours, theirs = pair(torch.float32, 4)
    ours.compiled = True
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    torch.testing.assert_close(y_ours, y_theirs)
    assert_same_state(ours, theirs, torch.float32)
    g = torch.randn(x.shape, generator=gen)
    y_ours.backward(g)
    y_theirs.backward(g)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
    assert "compiled=True" in repr(ours)
    # One graph per dtype and rank: another size of the same rank compiles nothing new, and the
    # global recompile limit is left alone (each dtype and rank has its own code object).
    from torch._dynamo import config
    from torch._dynamo.utils import counters

    graphs, limit = counters["stats"]["unique_graphs"], config.recompile_limit
    x2 = torch.randn(5, 3, 7, 2, generator=gen, requires_grad=True)
    ours(x2).backward(torch.randn(x2.shape, generator=gen))
    assert counters["stats"]["unique_graphs"] == graphs and config.recompile_limit == limit
