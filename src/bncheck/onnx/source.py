"""Model sources: what ``bncheck export``, ``check`` and ``gate`` build, and what it takes.

>>> from bncheck.onnx.source import lenet_source, model_source
>>> lenet_source("torch").inputs
(InputSpec(name='input', shape=(2, 1, 28, 28)),)
>>> src = model_source("torch.nn:Linear", model_args={"in_features": 4, "out_features": 2},
...                    input_shapes=[(3, 4)])
>>> src.label, src.inputs[0].shape
('torch.nn:Linear(in_features=4, out_features=2)', (3, 4))

A source is LeNet-BN (the default, with ``--bn``), a ``FILE.py:factory`` or a
``package.module:factory`` (``monai.networks.nets:resnet18``) called with ``--model-arg``
keyword arguments, plus its input shapes (``--input-shape``, repeatable; the first dimension is
the batch). :meth:`ModelSource.build` makes the model deterministically from a seed (random
init, nothing downloaded), gives its BatchNorms running statistics by training-mode forwards on
generated data (``calibrate``) or loads a checkpoint, and puts it in eval mode.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.errors import InvalidArgument, TargetError
from bncheck.infra.validation import check_positive_int, check_type
from bncheck.reference.lenet import INPUT_SHAPE, BNFactory

__all__ = ["InputSpec", "ModelSource", "lenet_source", "model_source", "parse_model_arg",
           "parse_shape", "generated_inputs"]

#: LeNet-BN's calibration: 24 training-mode forwards of 16 (0.9 ** 24 = 8% of the initial
#: statistics left; a small batch, so a running-variance bias of n / (n - 1) shows).
LENET_CALIBRATION = (24, 16)
#: Any other model: 8 forwards of 8 (0.9 ** 8 = 43% of the initial 0 / 1 left: far enough from
#: a fresh layer's statistics for an export that ignores them to fail, cheap for big nets).
MODEL_CALIBRATION = (8, 8)


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name and an example shape (dim 0 is the batch)."""

    name: str
    shape: tuple[int, ...]


def generated_inputs(specs: Sequence[InputSpec], batch: int, *, seed: int) -> tuple[Tensor, ...]:
    """Deterministic float32 inputs in [0, 1) for ``specs`` at ``batch`` rows.

    The same ``(specs, batch, seed)`` gives the same bytes on every machine (torch's CPU
    generator); for LeNet-BN's single input it equals :func:`bncheck.onnx.make_inputs`.
    """
    check_positive_int(batch, "batch")
    check_type(int, seed, "seed")
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.rand((batch, *s.shape[1:]), generator=gen, dtype=torch.float32)
                 for s in specs)


def parse_shape(text: str, name: str = "--input-shape") -> tuple[int, ...]:
    """``"1,3,64,64"`` -> ``(1, 3, 64, 64)``.

    Raises:
        InvalidArgument: not comma-separated positive integers.
    """
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise InvalidArgument(f"Expected {name} as comma-separated positive integers, batch "
                              f"first (e.g. 1,3,224,224), received {name}={text!r}")
    from bncheck.infra.workers import check_fits_in_memory

    check_fits_in_memory(math.prod(dims) * 4, f"{name}={text}", "a float32 input of that shape")
    return dims


def parse_model_arg(text: str) -> tuple[str, Any]:
    """``"spatial_dims=2"`` -> ``("spatial_dims", 2)``; values are Python literals or strings.

    Raises:
        InvalidArgument: no ``=``, or the key is not an identifier.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise InvalidArgument(f"Expected --model-arg as KEY=VALUE with KEY a Python identifier "
                              f"(e.g. spatial_dims=2), received --model-arg={text!r}")
    try:
        value: Any = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return key, value


@dataclass(frozen=True)
class ModelSource:
    """A model to export or compare with: how to build it and what inputs it takes."""

    spec: str
    label: str
    factory: Callable[[int], nn.Module] = field(repr=False)  # seed -> a fresh model
    inputs: tuple[InputSpec, ...]
    calibration: tuple[int, int]
    batches: tuple[int, ...]
    output_names: tuple[str, ...] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    dynamic_batch: bool = True

    @property
    def is_lenet(self) -> bool:
        return self.spec == "lenet"

    def make_inputs(self, batch: int, *, seed: int) -> tuple[Tensor, ...]:
        """Deterministic inputs of ``batch`` rows (see :func:`generated_inputs`)."""
        return generated_inputs(self.inputs, batch, seed=seed)

    def build(self, *, seed: int = 0, checkpoint: str | Path | None = None,
              calibrate: int | None = None) -> nn.Module:
        """The model from ``seed`` with running statistics, in eval mode.

        Args:
            seed: seeds the initialization (the global RNG is left as it was) and the
                calibration batches.
            checkpoint: a ``state_dict`` file to load instead of calibrating.
            calibrate: the number of training-mode forwards (default: the source's).

        Raises:
            InvalidArgument: bad ``seed``/``calibrate``, a bad checkpoint.
            TargetError: the factory or a forward raised (named with the file and line).
        """
        from bncheck.engine.target import user_code
        from bncheck.onnx.build import calibrate as run_calibration
        from bncheck.onnx.build import load_checkpoint

        check_type(int, seed, "seed")
        if seed < 0:
            raise InvalidArgument(f"Expected seed >= 0, received seed={seed}")
        if calibrate is not None and (not isinstance(calibrate, int) or calibrate < 0):
            raise InvalidArgument(f"Expected --calibrate to be an integer >= 0, received "
                                  f"calibrate={calibrate!r}")
        with torch.random.fork_rng(devices=[]), user_code(f"building {self.label}"):
            torch.manual_seed(seed)
            model = self.factory(seed)
        if not isinstance(model, nn.Module):
            raise TargetError(f"{self.label} returned {type(model).__name__}, expected a "
                              f"torch.nn.Module")
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, label=self.label)
        else:
            steps, batch = self.calibration
            run_calibration(model, seed=seed, steps=steps if calibrate is None else calibrate,
                            batch=batch, make=lambda b, s: self.make_inputs(b, seed=s),
                            label=self.label)
        return model.eval()

    def to_json(self) -> dict[str, Any]:
        return {"model": self.spec, **self.details,
                "input_shapes": [list(s.shape) for s in self.inputs],
                "dynamic_batch": self.dynamic_batch}


def lenet_source(bn: str | BNFactory = "scratch") -> ModelSource:
    """The seed's LeNet-BN with ``bn`` (``scratch``, ``torch``, a TARGET or a factory)."""
    from bncheck.reference.lenet import lenet_bn, resolve_bn

    factory = resolve_bn(bn) if isinstance(bn, str) else bn
    name = bn if isinstance(bn, str) else getattr(bn, "__qualname__", "factory")
    return ModelSource(spec="lenet", label=f"LeNet-BN (bn={name})",
                       factory=lambda seed: lenet_bn(factory, seed=seed),
                       inputs=(InputSpec("input", (2, *INPUT_SHAPE)),),
                       calibration=LENET_CALIBRATION, batches=(1, 7, 64),
                       output_names=("logits",), details={"bn": name})


def model_source(spec: str | None = None, *, model_args: Mapping[str, Any] | None = None,
                 input_shapes: Sequence[tuple[int, ...]] = (), bn: str | None = None,
                 dynamic_batch: bool = True) -> ModelSource:
    """The source ``bncheck export --model SPEC`` names (``None``: LeNet-BN).

    Args:
        spec: ``FILE.py:factory`` or ``package.module:factory`` (a function or a Module
            class), or ``None`` for LeNet-BN.
        model_args: keyword arguments for the factory.
        input_shapes: one example shape per input, batch first (required with ``spec``).
        bn: LeNet-BN's BatchNorm (only without ``spec``).
        dynamic_batch: export dim 0 as a dynamic batch axis (else the shapes are fixed).

    Raises:
        InvalidArgument: options that do not fit together (``--bn`` with ``--model``, no
            ``--input-shape`` for a model).
        TargetError: the factory cannot be imported.
    """
    from bncheck.engine.target import load_target

    model_args = dict(model_args or {})
    if spec is None:
        if model_args or input_shapes:
            what = "--model-arg" if model_args else "--input-shape"
            raise InvalidArgument(f"{what} needs --model (LeNet-BN takes no arguments and one "
                                  f"input of shape (N, 1, 28, 28))")
        source = lenet_source(bn or "scratch")
        if dynamic_batch:
            return source
        return _replace(source, dynamic_batch=False, batches=(source.inputs[0].shape[0],))
    if bn is not None:
        raise InvalidArgument(f"--bn replaces LeNet-BN's BatchNorm; with --model the model "
                              f"brings its own, received --bn={bn!r} and --model={spec!r}")
    if not input_shapes:
        raise InvalidArgument(f"Expected --input-shape for --model={spec!r} (one per input, "
                              f"batch first, e.g. --input-shape 1,3,224,224)")
    factory = load_target(spec)
    args_text = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    names = ["input"] if len(input_shapes) == 1 else [f"input_{i}"
                                                       for i in range(len(input_shapes))]
    batch = input_shapes[0][0]
    if any(s[0] != batch for s in input_shapes):
        raise InvalidArgument(f"Expected every --input-shape to have the same batch (dim 0), "
                              f"received {[list(s) for s in input_shapes]}")
    return ModelSource(
        spec=spec, label=f"{spec}({args_text})",
        factory=lambda _seed: factory(**model_args),  # the RNG is seeded around the call
        inputs=tuple(InputSpec(n, tuple(s)) for n, s in zip(names, input_shapes, strict=True)),
        calibration=MODEL_CALIBRATION, batches=(1, 3) if dynamic_batch else (batch,),
        details={"model_args": {k: v if isinstance(v, int | float | str | bool | None)
                                else repr(v) for k, v in model_args.items()}},
        dynamic_batch=dynamic_batch)


def _replace(source: ModelSource, **changes: Any) -> ModelSource:
    import dataclasses

    return dataclasses.replace(source, **changes)
