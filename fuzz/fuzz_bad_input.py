"""Arbitrary input into the reference: success or a BNCheckError naming the argument, nothing else.

Usage: python fuzz/fuzz_bad_input.py --examples 5000 [--seed S]
"""

from __future__ import annotations

import argparse
import sys

import torch
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import bncheck
from bncheck.errors import BNCheckError

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64,
          torch.int8, torch.bool, torch.complex64]
ARG_NAMES = ("input", "num_features", "running_mean", "running_var", "weight", "bias",
             "momentum", "eps", "channel", "value per channel")

maybe_tensor = st.one_of(
    st.none(),
    st.builds(lambda n, d: torch.ones(n, dtype=d), st.integers(0, 5), st.sampled_from(DTYPES)),
    st.sampled_from([1.0, "x", [1.0, 2.0]]),
)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                    st.none(), st.just("0.1"))


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=7))
    dtype = draw(st.sampled_from(DTYPES))
    return torch.zeros(shape, dtype=dtype) if dtype == torch.bool else torch.ones(
        shape, dtype=dtype)


def _check(call) -> None:  # type: ignore[no-untyped-def]
    try:
        call()
    except BNCheckError as e:
        assert any(name in str(e) for name in ARG_NAMES), f"message names no argument: {e}"


@st.composite
def channel_tensors(draw: st.DrawFn, x: torch.Tensor) -> object:
    """Mostly one value per channel of ``x`` (so the call gets past the shape checks)."""
    if x.dim() >= 2 and draw(st.booleans()):
        dtype = draw(st.sampled_from(DTYPES))
        return torch.ones(x.shape[1], dtype=dtype)
    return draw(maybe_tensor)


@given(data=st.data(), x=tensors(), training=st.booleans(),
       momentum=st.one_of(st.floats(0, 1), numbers), eps=st.one_of(st.floats(1e-6, 1), numbers))
def fuzz_functional(data, x, training, momentum, eps):  # type: ignore[no-untyped-def]
    rm, rv, w, b = (data.draw(channel_tensors(x)) for _ in range(4))
    _check(lambda: bncheck.batch_norm(x, rm, rv, w, b, training, momentum, eps))


@given(num_features=st.one_of(st.integers(-1, 4), st.just(2.0)), x=tensors(),
       training=st.booleans(), momentum=numbers, eps=numbers)
def fuzz_module(num_features, x, training, momentum, eps):  # type: ignore[no-untyped-def]
    def call() -> None:
        bncheck.BatchNorm(num_features, eps=eps, momentum=momentum).train(training)(x)

    _check(call)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"seed {args.seed}, {args.examples} examples per harness")
    for harness in (fuzz_functional, fuzz_module):
        seed(args.seed)(settings(max_examples=args.examples, deadline=None,
                                 database=None)(harness))()
        print(f"{harness.__name__}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
