"""Hunt for false alarms: the catalogue, thorough profile, fresh seeds, on correct BatchNorms.

Usage: python fuzz/fuzz_catalogue.py --rounds 5 [--seed S] [--examples N]
Exit status 1 and the replay command when any property fails on a correct implementation.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from torch import nn

import bncheck
from bncheck.engine.runner import verify

TARGETS = [
    ("bncheck.BatchNorm", bncheck.BatchNorm, "2,3,4,5"),
    ("torch.nn:BatchNorm1d", nn.BatchNorm1d, "2,3"),
    ("torch.nn:BatchNorm2d", nn.BatchNorm2d, "4"),
    ("torch.nn:BatchNorm3d", nn.BatchNorm3d, "5"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--examples", type=int, default=None)
    args = parser.parse_args(argv)
    failed = 0
    for r in range(args.rounds):
        seed = args.seed + r if args.seed is not None else secrets.randbelow(2**31)
        for label, cls, dims in TARGETS:
            report = verify(cls, profile="thorough", examples=args.examples, seed=seed,
                            dims=tuple(int(d) for d in dims.split(",")), label=label)
            bad = [r for r in report.results if r.status in ("failed", "error")]
            print(f"seed {seed} {label}: {len(report.results) - len(bad)} passed, "
                  f"{len(bad)} failed")
            for res in bad:
                failed += 1
                print(f"  {res.name}: {res.message.splitlines()[0] if res.message else ''}")
                print(f"  replay: bncheck verify {label if ':' in label else ''} --dims {dims} "
                      f"--profile thorough --property {res.name} --seed {seed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
