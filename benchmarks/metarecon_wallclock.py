"""LOA meta-reconstruction: hypergradient methods at equal wall-clock (a speed-and-accuracy benchmark).

Usage: python benchmarks/metarecon_wallclock.py --out DIR [--methods penalty darts cg exact] [--seconds S]
                                               [--size 64] [--phases 5] [--seed 0] [--threads 1]

Every method meta-learns θ and ω of ``problems/metarecon`` (the embedded T1 stand-in, slabs with
gaps, the four seen radial tasks, K = 5, one slice per task per batch, Adam 5e-3 / 4e-2: the study
preset's setting of recipes/metarecon.py) for the same ``--seconds`` of wall-clock (then to the
end of its outer round); the validation PSNR it reached, its outer steps and σ(ω_i) are written to
DIR/metarecon_wallclock.json and printed. The numbers depend on the machine and its load: measure
on an idle one, with the thread count fixed. This was the recipe's ``--compare-hypergrad`` option.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from problems import metarecon as loa
from problems import mri


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["penalty", "darts", "cg", "exact"])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--phases", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (args.size, args.size)
    spec = mri.SliceSpec(crop=(160, 160), size=shape)
    slices = mri.load_slices(None, contrast="t1", spec=spec, layout=mri.SLABS_WITH_GAPS)
    masks = torch.stack([t.mask(shape, seed=args.seed) for t in loa.SEEN_TASKS])
    train, val = slices.splits["train"].images, slices.splits["val"].images

    def build(method: str):
        options = {"lam": 1e-5, "max_rounds": 1} if method == "penalty" else None
        return loa.meta_graph(
            train=loa.CrossTaskSlices(train, masks, seed=args.seed),
            val=loa.CrossTaskSlices(val, masks, seed=args.seed + 1),
            settings=loa.LOASettings(phases=args.phases),
            schedule=loa.StairSchedule(args.phases),
            batch_per_task=1,
            val_batch_per_task=1,
            unroll=5,
            hypergrad=method,
            hypergrad_options=options,
            theta_lr=5e-3,
            omega_lr=4e-2,
            seed=args.seed,
        )

    validation = loa.ValidationPSNR(val, masks, loa.StairSchedule(args.phases), batch=16)
    rows = loa.compare_at_equal_wallclock(
        build, args.methods, args.seconds, validation, inner_steps=5, device=torch.device("cpu"), seed=args.seed
    )
    for r in rows:
        r.update(threads=args.threads, size=args.size, phases=args.phases)
        print(
            f"{r['method']:>10}: {r['outer_steps']} outer steps in {r['seconds']:.1f} s, validation PSNR {r['value']:.3f} dB"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metarecon_wallclock.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
