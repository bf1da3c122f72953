"""Load a user's BatchNorm from a TARGET string and turn it into a factory.

>>> from bncheck.engine.target import load_target, bn_factory
>>> cls = load_target("torch.nn:BatchNorm2d")
>>> bn_factory(cls)(6, 4)  # doctest: +ELLIPSIS
BatchNorm2d(6, eps=1e-05, momentum=0.1, affine=True, ...track_running_stats=True)

TARGET is ``path/to/file.py:Name`` or ``package.module:Name``. ``Name`` is a Module class or a
factory. It is built as ``Name(num_features)`` (nn.BatchNorm style) or, when its signature has a
``num_dims`` parameter, ``Name(num_features, num_dims=num_dims)`` (the seed notebook's style).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from torch import nn

from bncheck.errors import BNCheckError, TargetError
from bncheck.infra.user_import import importing

__all__ = ["load_target", "bn_factory", "takes_num_dims", "Constructor", "inspect_constructor",
           "CONFIG_KWARGS", "user_code"]

#: Constructor keywords bncheck varies when the target's signature accepts them.
CONFIG_KWARGS = ("eps", "momentum", "affine", "track_running_stats", "bias")


@dataclass(frozen=True)
class Constructor:
    """What a target's signature says about how to build it (the one place bncheck looks).

    Attributes:
        takes_num_dims: built as ``obj(num_features, num_dims=...)`` (the seed notebook's style).
        accepts: which of :data:`CONFIG_KWARGS` it takes.
        momentum_may_be_none: it declares ``momentum=None`` (PyTorch's cumulative average): a
            torch BatchNorm class, a ``momentum`` defaulting to None, or one annotated Optional.
        torch_batchnorm: a subclass of torch's BatchNorm base class.
        required: names of required parameters other than the first (it cannot be built
            from ``num_features`` alone).
    """

    takes_num_dims: bool
    accepts: frozenset[str]
    momentum_may_be_none: bool
    torch_batchnorm: bool
    required: tuple[str, ...] = ()


def inspect_constructor(obj: Any) -> Constructor:
    """Read ``obj``'s signature once: see :class:`Constructor`."""
    torch_bn = isinstance(obj, type) and issubclass(obj, nn.modules.batchnorm._NormBase)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return Constructor(False, frozenset(), torch_bn, torch_bn)
    accepts = frozenset(k for k in CONFIG_KWARGS if k in params)
    momentum = params.get("momentum")
    may_be_none = torch_bn
    if momentum is not None and not may_be_none:
        ann = momentum.annotation
        text = "" if ann is inspect.Parameter.empty else (ann if isinstance(ann, str)
                                                           else repr(ann))
        may_be_none = momentum.default is None or "None" in text or "Optional" in text
    positional = [p for p in params.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = tuple(p.name for p in positional[1:]
                     if p.default is p.empty and p.name != "num_dims")
    return Constructor("num_dims" in params, accepts, may_be_none, torch_bn, required)


def _split(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise TargetError(
            f"Expected TARGET in the form path/to/file.py:Name or package.module:Name, "
            f"received TARGET={spec!r}")
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise TargetError(
            f"Expected TARGET in the form path/to/file.py:Name or package.module:Name, "
            f"received TARGET={spec!r}")
    return where, name


def _import_file(path: Path, spec: str) -> Any:
    from bncheck.infra.io import describe_path

    problem = describe_path(path)  # a name too long, a FIFO, a device: said as such
    if problem is not None:
        raise TargetError(f"TARGET={_short(spec)!r}: {problem}")
    if path.is_dir():
        raise TargetError(f"TARGET={spec!r}: {str(path)!r} is a directory, expected a Python "
                          f"file (path/to/file.py:Name)")
    if not path.is_file():
        raise TargetError(f"TARGET={spec!r}: file {str(path)!r} does not exist")
    if path.suffix != ".py":
        raise TargetError(f"TARGET={spec!r}: {str(path)!r} is a file but not a .py file; "
                          f"expected path/to/file.py:Name or package.module:Name")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    modname = f"_bncheck_target_{path.stem}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(modname, path)
    if loader_spec is None or loader_spec.loader is None:
        raise TargetError(f"TARGET={spec!r}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[modname] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        with importing(spec):
            loader_spec.loader.exec_module(module)
    except BaseException as e:  # the user's module may raise anything, even SystemExit
        sys.modules.pop(modname, None)
        if isinstance(e, (KeyboardInterrupt, BNCheckError)):
            raise
        raise TargetError(
            f"TARGET={spec!r}: importing {str(path)!r} raised {type(e).__name__}: {e}") from e
    finally:
        with contextlib.suppress(ValueError):  # the module may have edited sys.path itself
            sys.path.remove(folder)
    return module


def load_target(spec: str) -> Any:
    """Import ``spec`` and return the object it names.

    Raises:
        TargetError: malformed spec, missing file or module, an exception while importing,
            or a missing name (the message lists the names that are there).
    """
    where, name = _split(spec)
    if len(spec) > 1000:  # no module name is this long; a path this long the OS refuses
        from bncheck.infra.io import describe_path

        raise TargetError(f"TARGET={_short(spec)!r}: "
                          f"{describe_path(Path(where)) or 'no file or module has such a name'}")
    if where.endswith(".py") or "/" in where or "\\" in where or Path(where).is_file():
        module = _import_file(Path(where), spec)
    else:
        try:
            with importing(spec):
                module = importlib.import_module(where)
        except BNCheckError:
            raise
        except ModuleNotFoundError as e:
            raise TargetError(f"TARGET={spec!r}: no module named {e.name!r}") from e
        except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
            raise TargetError(
                f"TARGET={spec!r}: importing {where!r} raised {type(e).__name__}: {e}") from e
    if not hasattr(module, name):
        raise TargetError(f"TARGET={spec!r}: {where!r} has no attribute {name!r}; "
                          f"{_suggest(module, name)}")
    obj = getattr(module, name)
    if not callable(obj):
        raise TargetError(f"TARGET={spec!r}: {name!r} is a {type(obj).__name__}, expected a "
                          f"Module class or a factory")
    return obj


def _short(text: str) -> str:
    from bncheck.infra.io import _short as short

    return short(text)


def _suggest(module: Any, name: str) -> str:
    """Close matches to ``name`` among the module's public callables (difflib), else what the
    module itself defines."""
    from bncheck.infra.validation import close_matches

    public = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v))
    close = close_matches(name, public)
    if close:
        return f"did you mean {', '.join(close)}?"
    own = [n for n in public if getattr(vars(module)[n], "__module__", None) == module.__name__
           and (isinstance(vars(module)[n], type) or len(public) <= 20)]
    if own:
        return f"available: {', '.join(own[:20])}"
    if public:
        return f"no name close to it among its {len(public)} public classes and functions"
    return "it defines no classes or functions"


def takes_num_dims(obj: Callable[..., Any]) -> bool:
    """Whether ``obj``'s signature has a ``num_dims`` parameter (the seed notebook's style)."""
    return inspect_constructor(obj).takes_num_dims


def inherited_contract(obj: Any) -> str | None:
    """``"torch.nn.BatchNorm2d"`` when ``obj`` subclasses one of torch's BatchNorms and brings
    its own ``forward``: what the type and signature offer (momentum=None, empty batches) is a
    contract inherited from torch rather than one the layer wrote (None otherwise)."""
    if not (isinstance(obj, type) and issubclass(obj, nn.modules.batchnorm._NormBase)):
        return None
    base: Any = next((c for c in obj.__mro__ if c.__module__.startswith("torch.nn")), None)
    if base is None or obj is base or obj.forward is base.forward:
        return None
    public = next((c for c in base.__mro__ if not c.__name__.startswith("_")), base)
    return f"torch.nn.{public.__name__}"


def inherited_failure(base: str, message: str, declaration: str) -> str:
    """A failure of a contract inherited from torch's ``base``, apart from the arithmetic, with
    the declaration that says the layer does not offer it."""
    return (f"differs from the contract it inherits from {base}: {message}\n"
            f"If the layer does not offer it, declare so: {declaration}")


def variant_kwargs(obj: Callable[..., Any], args: dict[str, Any]) -> dict[str, Any]:
    """The variant arguments ``obj``'s constructor takes by name (passed like momentum)."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in args.items() if k in params}


#: First constructor parameters that say the class infers its channel count at the first call
#: (``torch.nn.LazyBatchNorm2d(eps=...)``, ``keras.layers.BatchNormalization(axis=-1, ...)``).
_LAZY_FIRST = ("eps", "axis", "momentum")


def takes_num_features(obj: Callable[..., Any]) -> bool:
    """Whether ``obj(num_features, ...)`` passes the channel count: not for torch's lazy
    classes nor for classes whose first parameter is ``eps``/``axis``/``momentum`` (they learn
    it from the first input: :meth:`bncheck.engine.adapter.Target.build` materializes them)."""
    if isinstance(obj, type) and issubclass(obj, nn.modules.lazy.LazyModuleMixin):
        return False
    try:
        first = next(iter(inspect.signature(obj).parameters.values()), None)
    except (TypeError, ValueError):
        return True
    return first is None or first.name not in _LAZY_FIRST


def bn_factory(obj: Callable[..., Any], **kwargs: Any) -> Callable[[int, int], nn.Module]:
    """A factory ``make(num_features, num_dims)`` for ``obj``; ``kwargs`` go to every call.

    The factory raises :class:`TargetError` when ``obj`` cannot be built or does not return
    an ``nn.Module``.
    """
    with_dims = takes_num_dims(obj)
    with_features = takes_num_features(obj)
    label = getattr(obj, "__qualname__", repr(obj))

    def make(num_features: int, num_dims: int) -> nn.Module:
        try:
            if not with_features:
                module = obj(**kwargs)
            elif with_dims:
                module = obj(num_features, num_dims=num_dims, **kwargs)
            else:
                module = obj(num_features, **kwargs)
        except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
            call = (f"{label}({num_features}, num_dims={num_dims})" if with_dims
                    else f"{label}({num_features})")
            raise TargetError(f"building the target as {call} raised "
                              f"{type(e).__name__}: {e}") from e
        if not isinstance(module, nn.Module):
            raise TargetError(f"{label}(...) returned {type(module).__name__}, "
                              f"expected a torch.nn.Module")
        return module

    return make


def _user_frame(tb: TracebackType | None) -> tuple[str, int, str] | None:
    """The deepest traceback frame outside torch, bncheck and the standard library.

    Unlike :func:`bncheck.engine.adapter.is_user_file` (verify's rule), installed packages count: a
    model built from a package (``--model monai.networks.nets:resnet18``) fails in the
    package's code, and that is the line to name. Verify's rule leaves site-packages out
    because Hypothesis and numpy frames surround every call into the target there."""
    import sysconfig

    skip = [str(Path(p).resolve()) for p in (torch_dir(), Path(__file__).parent,
                                              sysconfig.get_paths()["stdlib"])]
    found = None
    for frame in traceback.extract_tb(tb):
        where = str(Path(frame.filename).resolve())
        if not any(where.startswith(s) for s in skip):
            found = (frame.filename, frame.lineno or 0, frame.name)
    return found


def torch_dir() -> Path:
    import torch

    return Path(torch.__file__).parent


@contextlib.contextmanager
def user_code(doing: str) -> Iterator[None]:
    """Turn an exception raised by user code into one paragraph naming its file and line.

    >>> with user_code("building the model"):
    ...     pass

    bncheck's own errors and Ctrl-C pass through; anything else becomes a
    :class:`TargetError` (``--debug`` shows the original traceback, kept as ``__cause__``).
    In a command that watches the user's code (``--timeout``), the block is time limited
    (:func:`bncheck.infra.workers.time_limited`).
    """
    from bncheck.infra.workers import time_limited

    try:
        with time_limited(doing):
            yield
    except (BNCheckError, KeyboardInterrupt):
        raise
    except Exception as e:
        frame = _user_frame(e.__traceback__)
        where = f" at {frame[0]}:{frame[1]} (in {frame[2]})" if frame else ""
        lines = str(e).strip().splitlines()
        raise TargetError(f"{doing}: {type(e).__name__}: {lines[0] if lines else ''}{where} "
                          f"(--debug shows the traceback)") from e
