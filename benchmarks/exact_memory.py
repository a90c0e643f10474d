"""Peak memory and time of ``exact`` against the number of unrolled steps, with and without checkpointing.

Usage: python benchmarks/exact_memory.py --out DIR [--unrolls 1,5,20] [--rounds N] [--batch B] [--threads T]

Problem: the benchmark CNN of ``hypergrad_cost.py`` (lower, Adam) with one learnable weight per
training image (upper). For every ``K`` in ``--unrolls``, ``exact`` through all ``K`` steps with the full
replay graph (``checkpoint=False``, the default) and with the checkpointed replay (``checkpoint=True``):

* peak memory of one outer step (``K`` lower steps and the upper step with its hypergradient): peak of
  live CPU tensor storages created inside it (``engines.track_peak_memory``; CUDA peak allocated on GPU),
  deterministic on CPU, and its ratio to ``K = 1`` of the same setting;
* time of one outer step, checkpointed over full at the same ``K``, measured round-robin (both settings
  one outer step per round, alternating which goes first) as per-process CPU time; median and IQR;
* the relative difference between the two hypergradients (the same computation: expected ~1e-16).

Writes DIR/exact_memory.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from hypergrad_cost import build  # the benchmark CNN (this folder is on sys.path)

from engines import Runner, track_peak_memory


def program(unroll: int, checkpoint: bool, batch: int) -> Runner:
    runner = Runner(build("exact", unroll, {"checkpoint": checkpoint}, batch), 10**6, device="cpu", progress=False)
    for _ in range(unroll):  # one outer step first: optimizer state, recorded window
        runner.step()
    return runner


def outer_step(runner: Runner, unroll: int) -> float:
    t0 = time.thread_time()
    for _ in range(unroll):
        runner.step()
    return time.thread_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for exact_memory.json")
    parser.add_argument("--unrolls", default="1,5,20", help="comma-separated K")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per K")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows, base = [], {}
    print(f"{'K':>3} {'checkpoint':>10} {'peak MiB':>9} {'x K=1':>6} {'time ckpt/full (IQR)':>22} {'rel. diff':>10}")
    for unroll in [int(k) for k in args.unrolls.split(",")]:
        runners = {ckpt: program(unroll, ckpt, args.batch) for ckpt in (False, True)}
        peaks = {}
        for ckpt, runner in runners.items():
            with track_peak_memory("cpu") as mem:
                outer_step(runner, unroll)
            peaks[ckpt] = mem.peak_bytes
            base.setdefault(ckpt, mem.peak_bytes)
        hyper = {c: r.graph["weights"].hypergradients["weights<-net"][0] for c, r in runners.items()}
        difference = float((hyper[True] - hyper[False]).norm() / hyper[False].norm())
        ratios = []
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            times = {c: outer_step(runners[c], unroll) for c in order}
            ratios.append(times[True] / times[False])
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        for ckpt in (False, True):
            row = {
                "unroll": unroll,
                "checkpoint": ckpt,
                "peak_memory_bytes": peaks[ckpt],
                "memory_ratio_to_k1": peaks[ckpt] / base[ckpt],
                "time_ratio_checkpoint_to_full": statistics.median(ratios),
                "time_ratio_q1": q[0],
                "time_ratio_q3": q[2],
                "relative_difference": difference,
                "batch": args.batch,
                "rounds": args.rounds,
            }
            rows.append(row)
            timing = f"{q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f})" if ckpt else "-"
            print(
                f"{unroll:>3} {ckpt!s:>10} {peaks[ckpt] / 2**20:>9.1f} {peaks[ckpt] / base[ckpt]:>6.2f} "
                f"{timing:>22} {difference:>10.1e}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "exact_memory.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out / 'exact_memory.json'}")


if __name__ == "__main__":
    main()
