"""Synchronised Flax BatchNorms (``axis_name``): checked as the distributed properties check
torch's SyncBatchNorm, over ``jax.vmap`` and over ``shard_map`` on several CPU devices.

>>> from bncheck.frameworks.flax_sync import verify_synchronised
>>> report = verify_synchronised("flax.nnx:BatchNorm", framework="flax-nnx", world_size=2,
...                              properties=["sync_forward"], examples=2,
...                              fixed={"use_fast_variance": False})  # doctest: +SKIP

A global batch is drawn (its size a multiple of ``world_size``) and split into equal shards, one
per member of the named axis; every shard runs the layer built with ``axis_name`` (declared, or
``"batch"``). Judged by the same float64 oracle as the single-process properties:

* ``sync_forward``: each shard's training output is the oracle's for the *global* batch;
* ``sync_running_stats``: after a step, the running statistics follow the convention with the
  global batch statistics, and every member holds the same;
* ``sync_eval``: each shard's eval output uses the running statistics alone.

Each case runs twice: under ``jax.vmap(axis_name=...)`` and under ``shard_map`` over a mesh of
``world_size`` CPU devices. The devices exist only when ``XLA_FLAGS`` says so before JAX starts,
so :func:`verify_synchronised` runs the checks in a fresh interpreter it starts with
``--xla_force_host_platform_device_count=N`` (never in the caller's process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st

from bncheck.engine import oracle
from bncheck.engine.properties._base import Checks, Context, PropertyCase, stat_values
from bncheck.engine.properties._tolerance import forward_tolerance, stats_tolerance
from bncheck.errors import InvalidArgument, PropertyFailure

__all__ = ["NAMES", "verify_synchronised"]

NAMES = ("sync_forward", "sync_running_stats", "sync_eval")
AXIS = "batch"
HOWS = ("jax.vmap", "shard_map")


def _run_sharded(bn: Any, how: str, x: torch.Tensor, training: bool, world: int,
                 axis: str) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The layer on ``world`` equal shards of ``x`` along the named axis: the output (torch
    layout) and each member's running statistics after the call."""
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from bncheck.frameworks.flax import to_jax, to_torch, x64

    model = bn.model

    def member(variables: Any, xs: Any) -> Any:
        y, new = model.apply(variables, xs, training)
        return y, jax.tree_util.tree_map(lambda a: a[None], new)

    with x64():
        xt = to_jax(bn.to_target_layout(x))
        shards = xt.reshape((world, xt.shape[0] // world, *xt.shape[1:]))
        if how == "jax.vmap":
            y, new = bn.invoke(f"a forward under {how}", jax.vmap(
                member, in_axes=(None, 0), axis_name=axis), bn.variables, shards)
            y = y.reshape(xt.shape)
            new = jax.tree_util.tree_map(lambda a: a[:, 0], new)
        else:
            from jax.sharding import NamedSharding

            mesh = jax.make_mesh((world,), (axis,),
                                 axis_types=(jax.sharding.AxisType.Auto,))
            f = jax.shard_map(member, mesh=mesh, in_specs=(P(), P(axis)),
                              out_specs=(P(axis), P(axis)), check_vma=False)
            variables = jax.device_put(bn.variables, NamedSharding(mesh, P()))
            xs = jax.device_put(xt, NamedSharding(mesh, P(axis)))
            y, new = bn.invoke(f"a forward under {how}", jax.jit(f), variables, xs)
        coll = bn.stat_collection
        means, variances = (np.asarray(new[coll][bn.mean_name]),
                            np.asarray(new[coll][bn.var_name]))
        stats = [(torch.from_numpy(means[r].astype(np.float64)),
                  torch.from_numpy(variances[r].astype(np.float64))) for r in range(world)]
        out = bn.from_target_layout(to_torch(y))
    return out, stats


@dataclass(frozen=True)
class _SyncProperty:
    """One synchronised property, run by :func:`bncheck.engine.runner.run_property`."""

    name: str
    run: Callable[[Context, PropertyCase, Checks, int, str], None]
    training: bool
    world: int
    axis: str
    trains: bool = True

    def skip_reason(self, ctx: Context) -> str | None:
        return None

    def describe(self, case: Any) -> str:
        return f"{case.describe()}, {self.world} shards of {case.case.shape[0] // self.world}"

    def cases(self, ctx: Context) -> st.SearchStrategy[PropertyCase]:
        world = self.world
        cases = ctx.cases(training=self.training, grad_modes=["enabled"], max_batch=3 * world,
                          configs=ctx.configs(track_running_stats=True)).filter(
            lambda c: c.shape[0] % world == 0 and c.shape[0] // world >= 1
            and (not self.training or c.shape[0] > 1))
        return cases.flatmap(lambda c: st.builds(PropertyCase, st.just(c),
                                                 stat_values(c.num_features)))

    def check(self, ctx: Context, case: PropertyCase) -> None:
        checks = Checks()
        for how in HOWS:
            self.run(ctx, case, checks, self.world, how)
        checks.raise_if_failed()


def _sync_forward(ctx: Context, drawn: PropertyCase, checks: Checks, world: int,
                  how: str) -> None:
    case = drawn.case
    bn = ctx.build(case)
    y, _ = _run_sharded(bn, how, case.x, True, world, ctx.target.fixed_flags["axis_name"])
    mean, var = oracle.batch_stats(case.x)
    w, b = bn.params()
    expected = oracle.normalize(case.x, mean, var, eps=case.config.eps, weight=w, bias=b)
    tol = forward_tolerance(case.x, mean, var, eps=case.config.eps, weight=w, bias=b,
                            dtype=case.dtype)
    checks.close(y, expected, tol, f"training output under {how} (global batch statistics)")


def _sync_running_stats(ctx: Context, drawn: PropertyCase, checks: Checks, world: int,
                        how: str) -> None:
    case, conv, cfg = drawn.case, ctx.target.convention, drawn.case.config
    assert drawn.installed is not None
    bn = ctx.build(case)
    bn.set_stats(*drawn.installed)
    before = bn.require_stats()
    _, stats = _run_sharded(bn, how, case.x, True, world, ctx.target.fixed_flags["axis_name"])
    mean, var = oracle.batch_stats(case.x)
    n = oracle.count_per_channel(case.x.shape)
    tm, tv = stats_tolerance(case.x, before[0], before[1], mean, var,
                             weight=conv.batch_weight(cfg.momentum, 1),
                             correction=conv.correction(n),
                             stat_dtype=bn.stat_dtype() or torch.float32)
    exp_m, exp_v = conv.expected_stats(before[0], before[1], mean, var, count=n,
                                       momentum=cfg.momentum, steps=1)
    for r, (got_m, got_v) in enumerate(stats):
        checks.close(got_m, exp_m, tm, f"running_mean of member {r} under {how}")
        checks.close(got_v, exp_v, tv, f"running_var of member {r} under {how}")
        if r:
            checks.that(torch.equal(got_m, stats[0][0]) and torch.equal(got_v, stats[0][1]),
                        f"member {r}'s running statistics differ from member 0's under {how}")


def _sync_eval(ctx: Context, drawn: PropertyCase, checks: Checks, world: int, how: str) -> None:
    case = drawn.case
    assert drawn.installed is not None
    bn = ctx.build(case)
    bn.set_stats(*drawn.installed)
    mean, var = bn.require_stats()
    y, stats = _run_sharded(bn, how, case.x, False, world, ctx.target.fixed_flags["axis_name"])
    w, b = bn.params()
    expected = oracle.normalize(case.x, mean, var, eps=case.config.eps, weight=w, bias=b)
    tol = forward_tolerance(case.x, mean, var, eps=case.config.eps, n=1, weight=w, bias=b,
                            dtype=case.dtype)
    checks.close(y, expected, tol, f"eval output under {how}")
    for r, (m, v) in enumerate(stats):
        checks.that(torch.equal(m, mean) and torch.equal(v, var),
                    f"an eval forward under {how} changed member {r}'s running statistics")


_RUNS = {"sync_forward": (_sync_forward, True), "sync_running_stats": (_sync_running_stats, True),
         "sync_eval": (_sync_eval, False)}


def _check_names(properties: Sequence[str] | None) -> list[str]:
    chosen = list(properties) if properties else list(NAMES)
    for name in chosen:
        if name not in NAMES:
            raise InvalidArgument(f"Expected synchronised JAX properties from {list(NAMES)}, "
                                  f"received property={name!r}")
    return chosen


def run_here(spec: str, framework: str, world_size: int, properties: Sequence[str] | None,
             examples: int | None, seed: int, fixed: dict[str, Any]) -> dict[str, Any]:
    """The checks in this process (which must have ``world_size`` CPU devices): the report as
    JSON."""
    from bncheck.engine.runner import Report, _settings, build_target, run_property
    from bncheck.engine.target import load_target

    fixed = {**fixed, "axis_name": fixed.get("axis_name", AXIS)}
    t = build_target(load_target(spec), label=spec, framework=framework, fixed=fixed,
                     dims=(2, 4))
    ctx = Context(t, (torch.float32, torch.float64))
    report = Report(spec, t.convention.describe(), seed, "ci")
    config = _settings("ci", examples, True)
    for name in _check_names(properties):
        run, training = _RUNS[name]
        prop = _SyncProperty(name, run, training, world_size, fixed["axis_name"])
        report.results.append(run_property(prop, ctx, seed=seed, config=config))  # type: ignore[arg-type]
    return report.to_json()


def verify_synchronised(spec: str, *, framework: str, world_size: int,
                        properties: Sequence[str] | None = None, examples: int | None = None,
                        seed: int = 0, fixed: dict[str, Any] | None = None,
                        timeout: float = 600) -> Any:
    """Run the synchronised properties against ``spec`` (``module:Name`` or ``file.py:Name``)
    in a fresh interpreter with ``world_size`` CPU devices; return the
    :class:`~bncheck.engine.runner.Report`.

    Raises:
        InvalidArgument: ``world_size`` below 2 or an unknown property name.
        PropertyFailure: the checking process failed (its last lines are in the message).
    """
    from bncheck.engine.runner import PropertyResult, Report

    if not isinstance(world_size, int) or world_size < 2:
        raise InvalidArgument(f"Expected world_size >= 2 shards, received "
                              f"world_size={world_size!r}")
    _check_names(properties)
    env = {**os.environ,
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                         f" --xla_force_host_platform_device_count={world_size}").strip(),
           "JAX_PLATFORMS": "cpu"}
    args = json.dumps([spec, framework, world_size, list(properties or []), examples, seed,
                       fixed or {}])
    done = subprocess.run([sys.executable, "-m", "bncheck.frameworks.flax_sync", args],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise PropertyFailure(f"the synchronised JAX checks failed to run:\n{tail}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    report = Report(data["target"], data["convention"], data["seed"], data["profile"])
    for p in data["properties"]:
        report.results.append(PropertyResult(**p))
    return report


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", FutureWarning)
    spec_, framework_, world_, props_, examples_, seed_, fixed_ = json.loads(sys.argv[1])
    print(json.dumps(run_here(spec_, framework_, world_, props_, examples_, seed_, fixed_)))
