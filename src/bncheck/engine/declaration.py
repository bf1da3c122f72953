"""What a user declares about a BatchNorm: one typed, frozen object, built and checked in one place.

>>> from bncheck.engine.declaration import Declaration
>>> d = Declaration(convention="onnx", eps=1e-3, names={"weight": "scale"})
>>> d.eps, dict(d.names)
(0.001, {'weight': 'scale'})
>>> d.cli_args()
['--convention', 'onnx', '--eps', '0.001', '--names', 'weight=scale']

A declaration travels whole to every path that builds or judges the target (single-process
verify, ``--jobs`` workers, ``--world-size`` ranks, mutants, ``train --bn``, the pytest plugin).
It is built from Python keyword arguments (:meth:`Declaration.from_kwargs`), from command-line
text (:meth:`Declaration.from_cli`, with the options :func:`declaration_options` makes), or from a
config table (:mod:`bncheck.engine.config`). Every field is declared ONCE below, with
:func:`declared`: its type (the annotation), its default ("not declared"), its option name, its
help, how command-line text and config values become a value, and the rule that checks it.
Adding a declaration is adding one field here; the click options, the config reader, the
validation, the header and ``--json`` follow from it.

"Not declared" is ``None`` for every field but ``momentum``, where ``None`` is PyTorch's
cumulative average and "not declared" is :data:`~bncheck.infra.validation.not_set`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final, TypeVar

from bncheck.engine.conventions import PRESETS, Convention
from bncheck.errors import InvalidArgument, InvalidArgumentType
from bncheck.infra.validation import (
    NotSet,
    check_eps,
    check_momentum,
    check_type,
    close_matches,
    describe,
    not_set,
)

if TYPE_CHECKING:
    from bncheck.engine.variants import Variant

__all__ = ["Declaration", "DeclarationSpec", "FrozenMap", "FLAG_TYPES", "NAME_KEYS", "SPECS",
           "declared", "declaration_options"]

F = TypeVar("F", bound=Callable[..., Any])

#: Constructor flags a target may fix (``fixed=``): their types.
FLAG_TYPES: Final[dict[str, type]] = {"affine": bool, "track_running_stats": bool, "bias": bool}
#: The keys of ``names=`` (torch's attribute names).
NAME_KEYS: Final = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
#: Input ranks a BatchNorm may take.
RANKS: Final = (2, 3, 4, 5)
#: The variants a target may declare (their arguments: :data:`bncheck.engine.variants.VARIANTS`).
VARIANT_NAMES: Final = ("batch-renorm", "ghost")


class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable, picklable mapping (sorted by key): how a declaration keeps
    ``names`` and ``fixed``."""

    __slots__ = ("_items",)
    _items: tuple[tuple[str, Any], ...]

    def __init__(self, items: Mapping[str, Any] | Sequence[tuple[str, Any]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        object.__setattr__(self, "_items", tuple(sorted(dict(pairs).items())))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

    def __repr__(self) -> str:
        return repr(dict(self._items))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._items,))


# -- one spec per declaration -----------------------------------------------------------------
@dataclass(frozen=True)
class DeclarationSpec:
    """How one declaration is named, typed, parsed, checked and shown (see :func:`declared`)."""

    name: str
    option: str
    help: str
    check: Callable[[Any, str], Any]
    parse: Callable[[str, str], Any]
    show: Callable[[Any], str]
    to_json: Callable[[Any], Any]
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    flag: bool = False
    no_option: str | None = None
    unset: Any = None

    @property
    def key(self) -> str:
        """The config-file key: the long option name with ``-`` written ``_``."""
        return self.name

    def click_option(self) -> Callable[[F], F]:
        import click

        if self.flag and self.no_option:  # both ways: --empty-batches/--no-empty-batches
            return click.option(f"{self.option}/{self.no_option}", self.name, default=None,
                                help=self.help)
        if self.flag:
            return click.option(self.option, self.name, is_flag=True, default=None,
                                help=self.help)
        kind: Any = click.Choice(list(self.choices)) if self.choices else None
        return click.option(self.option, self.name, type=kind, default=None,
                            metavar=self.metavar, help=self.help)


def shown(value: Any) -> str:
    """A value as one would type it (``1`` for 1.0; every float round-trips)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and float(f"{value:g}") == value:
        return f"{value:g}"
    return str(value)


def _same(text: str, _label: str) -> str:
    return text


def declared(default: Any, *, option: str, help: str, check: Callable[[Any, str], Any],
             parse: Callable[[str, str], Any] = _same, show: Callable[[Any], str] = shown,
             to_json: Callable[[Any], Any] | None = None, metavar: str | None = None,
             choices: tuple[str, ...] | None = None, flag: bool = False,
             no_option: str | None = None) -> Any:
    """A :class:`Declaration` field: ``default`` is "not declared"; ``check(value, label)``
    validates a Python or config value and returns it normalised (``label`` is how the error
    names it: ``eps`` or ``--eps``); ``parse(text, label)`` turns command-line text into such a
    value; ``show`` renders it as command-line text; ``to_json`` as JSON (default: as is).
    A ``flag`` is switched on by ``option`` and off by ``no_option``
    (``--empty-batches/--no-empty-batches``)."""
    spec = dict(option=option, help=help, check=check, parse=parse, show=show,
                to_json=to_json or (lambda v: v), metavar=metavar, choices=choices, flag=flag,
                no_option=no_option, unset=default)
    return dataclasses.field(default=default, metadata={"spec": spec})


# -- checkers (value, label) -> normalised value ----------------------------------------------
def _choice(options: Sequence[str]) -> Callable[[Any, str], Any]:
    def check(value: Any, label: str) -> Any:
        if value not in options:
            raise InvalidArgument(f"Expected {label} to be one of {', '.join(options)}, "
                                  f"received {label}={value!r}")
        return value
    return check


def _check_convention(value: Any, label: str) -> str | Convention:
    if isinstance(value, Convention):
        return value
    return _choice(tuple(PRESETS))(value, label)  # type: ignore[no-any-return]


def _check_momentum(value: Any, label: str) -> float | None:
    if isinstance(value, str) and value.lower() == "none":
        return None  # the config file's spelling of the cumulative average
    check_momentum(value, allow_none=True, name=label)
    return None if value is None else float(value)


def _parse_momentum(text: str, label: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"Expected {label} to be a number in [0, 1] or 'none', "
                              f"received {label}={text!r}") from None


def _check_eps(value: Any, label: str) -> float:
    check_eps(value, label)
    return float(value)


def _parse_float(text: str, label: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"Expected {label} to be a number, received {label}={text!r}"
                              ) from None


def _check_dims(value: Any, label: str) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidArgumentType(f"Expected {label} to be a list of input ranks like [2, 4], "
                                  f"received {label}={describe(value)}")
    for d in value:
        check_type(int, d, f"{label} item")
    dims = tuple(value)
    if not dims or any(d not in RANKS for d in dims):
        raise InvalidArgument(f"Expected {label} to be input ranks from 2 to 5, received "
                              f"{label}={dims!r}")
    return tuple(sorted(set(dims)))


def _parse_ints(text: str, label: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgument(f"Expected {label} to be comma-separated input ranks like 2,4, "
                              f"received {label}={text!r}") from None


def _pairs(text: str, label: str, example: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InvalidArgument(f"Expected {label} as key=value pairs like {example}, "
                                  f"received {label}={text!r}")
        out[key.strip()] = value.strip()
    return out


def _mapping(value: Any, label: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgumentType(f"Expected {label} to be a mapping like {example}, received "
                                  f"{label}={describe(value)}")
    return value


def _check_names(value: Any, label: str) -> FrozenMap:
    mapping = _mapping(value, label, "{'weight': 'scale'}")
    for key, name in mapping.items():
        if key not in NAME_KEYS:
            close = close_matches(str(key), NAME_KEYS)
            raise InvalidArgument(f"Expected {label} keys from {list(NAME_KEYS)}, received "
                                  f"{label}={dict(mapping)!r} ({key!r} is not one of them"
                                  + (f"; did you mean {', '.join(close)}?)" if close else ")"))
        if not isinstance(name, str) or not name.replace(".", "_").isidentifier():
            raise InvalidArgument(f"Expected {label}[{key!r}] to be an attribute name, received "
                                  f"{name!r} (a dotted name reaches into a submodule)")
    roles: dict[str, str] = {}
    for key, name in mapping.items():  # one attribute cannot play two roles
        if name in roles:
            raise InvalidArgument(f"Expected {label} to map each role to its own attribute, "
                                  f"received {roles[name]!r} and {key!r} both as {name!r}")
        roles[name] = key
    return FrozenMap(mapping)


def _parse_names(text: str, label: str) -> dict[str, str]:
    return _pairs(text, label, "weight=scale,running_var=exp_var")


def _check_fixed(value: Any, label: str, types: Mapping[str, Any] = FLAG_TYPES) -> FrozenMap:
    mapping = _mapping(value, label, "{'affine': True}")
    for key, flag in mapping.items():
        if key not in types:
            raise InvalidArgument(f"Expected {label} keys from {sorted(types)} (eps and "
                                  f"momentum have their own declarations), received "
                                  f"{label}={dict(mapping)!r}")
        check_type(types[key], flag, f"{label}[{key!r}]")
    return FrozenMap(mapping)


def _check_any_fixed(value: Any, label: str) -> FrozenMap:
    """The flags of any framework (``__post_init__`` then checks them against the declared
    framework's, :mod:`bncheck.frameworks`)."""
    from bncheck.frameworks import all_flag_types

    types = all_flag_types()
    mapping = _mapping(value, label, "{'affine': True}")
    for key, flag in mapping.items():  # unknown keys: named with the framework's list after
        if key in types:
            check_type(types[key], flag, f"{label}[{key!r}]")
    return FrozenMap(mapping)


def _parse_fixed(text: str, label: str) -> dict[str, Any]:
    """``key=true|false``; for a flag whose type is not bool (Flax's ``axis``, ``axis_name``)
    an int or a name."""
    from bncheck.frameworks import all_flag_types

    types = all_flag_types()
    out: dict[str, Any] = {}
    for key, value in _pairs(text, label, "affine=true").items():
        if types.get(key, bool) is int:
            out[key] = _parse_int(value, f"{label} {key}")
        elif types.get(key, bool) is str:
            out[key] = value
        elif value.lower() not in ("true", "false"):
            raise InvalidArgument(f"Expected {label} {key}=true or {key}=false, received "
                                  f"{label}={text!r}")
        else:
            out[key] = value.lower() == "true"
    return out


def _show_map(value: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={shown(v)}" for k, v in value.items())


def _check_variant_args(value: Any, label: str) -> FrozenMap:
    """A mapping; its keys and values are checked against the declared variant's arguments
    (:meth:`bncheck.engine.variants.Variant.from_declaration`) once the variant is known."""
    return FrozenMap(_mapping(value, label, "{'virtual_batch': 4}"))


def _parse_variant_args(text: str, label: str) -> dict[str, str]:
    return _pairs(text, label, "r_max=3,d_max=5,warmup=0 or virtual_batch=4")


def _check_axis(value: Any, label: str) -> int:
    check_type(int, value, label)
    if value not in (1, -1):
        raise InvalidArgument(f"Expected {label} to be 1 or -1, received {label}={value!r}")
    return int(value)


def _parse_int(text: str, label: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"Expected {label} to be a whole number, received "
                              f"{label}={text!r}") from None


def _check_identifier(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value.isidentifier():
        raise InvalidArgument(f"Expected {label} to be a keyword name like 'training', "
                              f"received {label}={value!r}")
    return value


def _check_bool(value: Any, label: str) -> bool:
    check_type(bool, value, label)
    return bool(value)


def _check_dtypes(value: Any, label: str) -> tuple[str, ...]:
    from bncheck.engine.strategies import DTYPES, dtype_name  # torch: only when dtypes are declared

    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidArgumentType(f"Expected {label} to be a list like ['float32', 'float64'], "
                                  f"received {label}={describe(value)}")
    out = []
    for d in value:
        name = d if isinstance(d, str) else dtype_name(d) if d in DTYPES.values() else None
        if name not in DTYPES:
            raise InvalidArgument(f"Expected {label} from {sorted(DTYPES)}, received {d!r}")
        out.append(name)
    if not out:
        raise InvalidArgument(f"Expected at least one dtype, received {label}=[]")
    return tuple(dict.fromkeys(out))


def _parse_list(text: str, _label: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _comma(value: Sequence[Any]) -> str:
    return ",".join(map(str, value))


# -- the declaration -------------------------------------------------------------------------
@dataclass(frozen=True)
class Declaration:
    """Everything a user can declare about a BatchNorm under verification; frozen, checked on
    construction (:class:`~bncheck.errors.InvalidArgument` naming ``field=value``).

    >>> Declaration(momentum=None).momentum is None  # PyTorch's cumulative average
    True
    >>> Declaration().declared()
    {}

    Every field defaults to "not declared": ``None`` (``momentum``: ``not_set``), meaning the
    convention's value, or what bncheck finds by trying the target.
    """

    convention: str | Convention = declared(
        "torch", option="--convention", choices=tuple(PRESETS), check=_check_convention,
        show=lambda v: v if isinstance(v, str) else v.name,
        to_json=lambda v: v if isinstance(v, str) else v.name,
        help="Running-statistics rule the target follows: torch (new = (1-m)*old + m*batch, "
        "unbiased, m=0.1), onnx (new = m*old + (1-m)*batch, biased, m=0.9; the seed notebook, "
        "old d2l), keras (onnx's rule, m=0.99, eps 1e-3, channels last) or flax (onnx's rule, "
        "m=0.99, eps 1e-5, channels last). Default torch (flax for a Flax --framework).")
    momentum_weights: str | None = declared(
        None, option="--momentum-weights", choices=("batch", "old"),
        check=_choice(("batch", "old")), help="Override: which value the momentum weights.")
    running_var: str | None = declared(
        None, option="--running-var", choices=("unbiased", "biased"),
        check=_choice(("unbiased", "biased")),
        help="Override: which batch variance the running variance averages.")
    running_stat: str | None = declared(
        None, option="--running-stat", choices=("var", "std"), check=_choice(("var", "std")),
        help="What the target stores: the running variance (default) or running std.")
    momentum: float | None | NotSet = declared(
        not_set, option="--momentum", metavar="M", check=_check_momentum, parse=_parse_momentum,
        show=lambda v: "none" if v is None else shown(v),
        to_json=lambda v: "none" if v is None else v,
        help="The target's momentum (a number, or 'none': the cumulative average); declared, "
        "it is always passed to the constructor and never drawn. Default: the convention's "
        "(drawn when the constructor takes momentum).")
    eps: float | None = declared(
        None, option="--eps", metavar="EPS", check=_check_eps, parse=_parse_float,
        help="The target's eps; declared, it is always passed to the constructor and never "
        "drawn. Default: the convention's (drawn when the constructor takes eps).")
    dims: Sequence[int] | None = declared(
        None, option="--dims", metavar="2,4", check=_check_dims, parse=_parse_ints, show=_comma,
        to_json=list, help="Input ranks the target supports. Default: 2,4, restricted to the "
        "ranks the target accepts when built and tried.")
    names: Mapping[str, str] | None = declared(
        None, option="--names", metavar="K=V,...", check=_check_names, parse=_parse_names,
        show=_show_map, to_json=dict, help="The target's own attribute names, e.g. "
        "weight=scale,bias=shift,running_mean=exp_mean,running_var=exp_var (dotted for a "
        "submodule's).")
    channel_axis: int | None = declared(
        None, option="--channel-axis", metavar="1|-1", check=_check_axis, parse=_parse_int,
        help="-1 for channels-last layers ((N, C), (N, L, C), (N, H, W, C)). Default: the "
        "convention's.")
    mode_argument: str | None = declared(
        None, option="--mode-argument", metavar="NAME", check=_check_identifier,
        help="The call keyword that selects train/eval (Keras: training).")
    fixed: Mapping[str, Any] | None = declared(
        None, option="--fixed", metavar="K=V,...", check=_check_any_fixed, parse=_parse_fixed,
        show=_show_map, to_json=dict, help="Constructor flags never to draw, e.g. "
        "affine=true,track_running_stats=true (keys: affine, track_running_stats, bias; Flax: "
        "use_fast_variance, use_bias, use_scale, axis, axis_name).")
    empty_batches: bool | None = declared(
        None, option="--empty-batches", no_option="--no-empty-batches", flag=True,
        check=_check_bool,
        help="The target accepts empty batches (checked by empty_batch), or does not "
        "(--no-empty-batches). Default: torch's BatchNorm classes and their subclasses do.")
    framework: str | None = declared(
        None, option="--framework", choices=("torch", "flax-nnx", "flax-linen"),
        check=_choice(("torch", "flax-nnx", "flax-linen")),
        help="What the target is written in: torch (also Keras 3 on its torch backend; the "
        "default), flax-nnx (a flax.nnx.Module, built as Name(num_features, rngs=...)) or "
        "flax-linen (a flax.linen.Module, built as Name()); a Flax target follows the flax "
        "convention unless another is declared. Needs the jax extra: pip install "
        "'bncheck[jax]' (docs/jax.md).")
    variant: str | None = declared(
        None, option="--variant", choices=VARIANT_NAMES, check=_choice(VARIANT_NAMES),
        help="The BatchNorm variant the target is, judged by its own oracle "
        "(docs/variants.md).")
    variant_args: Mapping[str, Any] | None = declared(
        None, option="--variant-args", metavar="K=V,...", check=_check_variant_args,
        parse=_parse_variant_args, show=_show_map, to_json=dict,
        help="The variant's arguments, e.g. r_max=3,d_max=5,warmup=0 or virtual_batch=4; "
        "those the constructor takes are passed to it.")
    dtypes: Sequence[str] | None = declared(
        None, option="--dtypes", metavar="LIST", check=_check_dtypes, parse=_parse_list,
        show=_comma, to_json=list, help="Comma-separated dtypes to check. Default: "
        "float32,float64,float16,bfloat16.")

    def __post_init__(self) -> None:
        for spec in SPECS.values():
            value = getattr(self, spec.name)
            if value is not spec.unset:
                object.__setattr__(self, spec.name, spec.check(value, spec.name))
        if self.fixed:  # the declared framework's flags only
            from bncheck.frameworks import framework

            _check_fixed(self.fixed, "fixed", framework(self.framework or "torch").flag_types)
            if "axis" in self.fixed:  # Flax's channel axis
                _check_axis(self.fixed["axis"], "fixed['axis']")
        if self.variant is not None:  # its arguments are checked against the variant's own
            given = self.variant_spec.kwargs  # type: ignore[union-attr]
            if self.variant_args is not None:
                object.__setattr__(self, "variant_args", FrozenMap(
                    {k: given[k] for k in self.variant_args}))
        elif self.variant_args:
            raise InvalidArgument(f"variant_args={dict(self.variant_args)!r} given without a "
                                  f"variant; declare variant='batch-renorm' or variant='ghost' "
                                  f"(--variant)")

    # -- builders --------------------------------------------------------------------------
    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], *, where: str = "") -> Declaration:
        """From Python keyword arguments (or a config table's keys); an unknown name is an
        :class:`~bncheck.errors.InvalidArgument` naming it and the close ones (``where`` says
        where it came from)."""
        for key in kwargs:
            if key not in SPECS:
                close = close_matches(key, SPECS)
                raise InvalidArgument(
                    f"Unknown declaration {key}={kwargs[key]!r}{where}; "
                    + (f"did you mean {', '.join(close)}? " if close else "")
                    + f"the declarations are {', '.join(SPECS)}")
        return cls(**kwargs)

    @classmethod
    def from_cli(cls, texts: Mapping[str, Any], *, base: Declaration | None = None
                 ) -> Declaration:
        """From the values of :func:`declaration_options` (``None``: not given on the command
        line), each overriding ``base`` (a config table's declaration)."""
        given: dict[str, Any] = {}
        for name, text in texts.items():
            spec = SPECS[name]
            if text is None:
                continue
            value = text if spec.flag or spec.choices else spec.parse(text, spec.option)
            given[name] = spec.check(value, spec.name)  # named as in Python and the config
        return dataclasses.replace(base, **given) if base is not None else cls(**given)

    def replace(self, **changes: Any) -> Declaration:
        """A copy with ``changes`` declared (checked as :meth:`from_kwargs`)."""
        return Declaration.from_kwargs({**self.declared(), **changes})

    # -- reading ---------------------------------------------------------------------------
    @functools.cached_property
    def variant_spec(self) -> Variant | None:
        """The declared variant with every argument (defaults filled in, types converted), or
        None (:mod:`bncheck.engine.variants`)."""
        if self.variant is None:
            return None
        from bncheck.engine.variants import Variant  # torch: only when a variant is declared

        return Variant.from_declaration(self.variant, self.variant_args)

    def declared(self) -> dict[str, Any]:
        """The fields that are declared (not at their "not declared" default), by name."""
        return {s.name: getattr(self, s.name) for s in SPECS.values()
                if getattr(self, s.name) != s.unset}

    @property
    def rule(self) -> Convention:
        """The running-statistics convention: the preset with the declared overrides."""
        name = self.convention
        if name == "torch" and self.framework not in (None, "torch"):
            name = "flax"  # a Flax target's default (only torch's default is overridden)
        base = PRESETS[name] if isinstance(name, str) else name
        return base.with_(momentum_weights=self.momentum_weights, running_var=self.running_var,
                          running_stat=self.running_stat)

    def cli_args(self) -> list[str]:
        """The command-line options that declare the same (``bncheck verify ... ARGS``)."""
        out: list[str] = []
        for name, value in self.declared().items():
            spec = SPECS[name]
            if spec.flag:
                out += [spec.option] if value else [spec.no_option] if spec.no_option else []
            else:
                out += [spec.option, spec.show(value)]
        return out

    def describe(self) -> str:
        """One line for the report header: every declared field as ``name=value``."""
        shown = [f"{n}={SPECS[n].show(v)}" for n, v in self.declared().items()]
        return ", ".join(shown) if shown else "nothing (every value the convention's or found)"

    def to_json(self) -> dict[str, Any]:
        """Every field (``null``: not declared; ``momentum`` ``"none"``: cumulative average)."""
        out = {}
        for spec in SPECS.values():
            value = getattr(self, spec.name)
            out[spec.name] = None if value is spec.unset and spec.unset in (None, not_set) \
                else spec.to_json(value)
        return out

    def refuse(self, path: str, names: Sequence[str]) -> None:
        """Raise :class:`~bncheck.errors.InvalidArgument` when any of ``names`` is declared:
        ``path`` cannot honour them (a declaration is refused, never dropped)."""
        given = {n: v for n, v in self.declared().items() if n in names}
        if given:
            shown = ", ".join(f"{n}={SPECS[n].show(v)} ({SPECS[n].option})"
                              for n, v in given.items())
            raise InvalidArgument(f"{path} cannot honour the declaration {shown}; leave it out "
                                  f"there")


def _specs(cls: type) -> dict[str, DeclarationSpec]:
    out = {}
    for f in fields(cls):
        meta = dict(f.metadata["spec"])
        out[f.name] = DeclarationSpec(name=f.name, **meta)
    return out


#: Every declaration's spec, by field name (the order of the help and the header).
SPECS: Final[dict[str, DeclarationSpec]] = {}
SPECS.update(_specs(Declaration))


def declaration_options(*, exclude: Sequence[str] = ()) -> Callable[[F], F]:
    """The click options for every declaration (less ``exclude``), in the order of
    :data:`SPECS`; the command receives them as keyword arguments named as the fields, ``None``
    where not given: pass them to :meth:`Declaration.from_cli`."""

    def deco(fn: F) -> F:
        for spec in reversed(list(SPECS.values())):
            if spec.name not in exclude:
                fn = spec.click_option()(fn)
        return fn

    return deco


def pop_declared(params: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the declaration options' values from a command's ``params``."""
    return {name: params.pop(name) for name in list(params) if name in SPECS}
