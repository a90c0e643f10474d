"""Wall-time overhead of auditing a run (``Runner(audit_every=N)``) against the same run without it.

Usage:
    python benchmarks/audit_overhead.py [--builder e2eaug-smoke | MODULE:FUNCTION] [--audit-every N]
        [--steps S] [--repeats R] [--no-trust] [--device cpu] [--work DIR] [--out DIR]

``--builder`` names a function returning a fresh graph, or ``(graph, runner keyword arguments)``
(e.g. ``validate``, ``valid_every``, ``seed``); it is called once per run. ``MODULE`` is a dotted
module or a ``.py`` file. The default, ``e2eaug-smoke``, is the ``e2eaug`` run of
``recipes/e2eaug.py --preset smoke`` on the embedded ISIC sample (U-Net, the first training size
and seed, its searchable generator pre-trained as the recipe does, validation and checkpoints every
``valid_every`` steps), built with the recipe's own functions; the pre-training is done once, in
``--work``.

Runs alternate (without, with, without, with, ...) so that load on the machine affects both alike;
each pair gives one overhead ``(t_audit - t_plain) / t_plain`` of ``Runner.run()``'s wall time, and
the median over ``--repeats`` pairs is printed with the number of audits per run and a check that
the audited run ended with bitwise the same parameters as the plain one. The time spent inside the
audit (``Runner.audit_seconds``) against the rest of the same audited run is printed too: on a
loaded machine it is the steadier estimate, as both parts see the same load. Audits happen at each
upper level's first step and every N-th after it. Writes DIR/audit_overhead.json with ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engines import AuditSettings, Graph, Runner

ROOT = Path(__file__).resolve().parents[1]


def e2eaug_smoke(work: Path, device: str, seed: int = 0) -> Callable[[], tuple[Graph, dict[str, Any]]]:
    """The recipe's smoke ``e2eaug`` run: returns a builder of fresh graphs (pre-training done once, now)."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import common
    import e2eaug

    args = e2eaug.parse_args(["--preset", "smoke", "--device", device, "--no-progress", "--out", str(work)])
    device_, _, _ = common.resolve(args)
    preset = e2eaug.PRESETS["smoke"]
    key = e2eaug.DATASET_KEYS[args.dataset]
    roots = {k: e2eaug.locate(k, args, work / "samples") for k in (key, *e2eaug.DATASETS[key].ood_tests)}
    n = e2eaug.comparison_sizes(key, preset, roots[key][1], None)[0]
    data = e2eaug.load_data(key, roots, n, seed, preset.image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrained = e2eaug.pretrain_generators({"e2eaug"}, preset, data, n, seed, work / "runs", device_, args)
    spec = e2eaug.RunSpec("e2eaug", "unet", n, seed)

    def build() -> tuple[Graph, dict[str, Any]]:
        # a copy per run: torch optimizers keep the state tensors they load, and training changes them in place
        graph = e2eaug.build_graph(spec, preset, data, copy.deepcopy(pretrained), {}, device_, 0)
        return graph, {
            "steps": preset.steps,
            "seed": seed,
            "validate": e2eaug.validation(data, device_),
            "valid_every": preset.valid_every,
            "monitor": f"val_{data.metric}",
            "mode": "max",
            "checkpoint_every": preset.valid_every,
        }

    return build


def load_builder(spec: str) -> Callable[[], Any]:
    """``MODULE:FUNCTION`` -> the function (MODULE a dotted name or a .py file)."""
    module_name, sep, function = spec.partition(":")
    if not sep or not function:
        raise SystemExit(f"error: --builder must read MODULE:FUNCTION or e2eaug-smoke, got {spec!r}")
    if module_name.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if loader is None or loader.loader is None:
            raise SystemExit(f"error: --builder: cannot load {module_name}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, function)


def one_run(build: Callable[[], Any], audit_every: int, settings: AuditSettings, steps: int | None, device: str):
    built = build()
    graph, kwargs = built if isinstance(built, tuple) else (built, {})
    kwargs = dict(kwargs)
    total = steps if steps is not None else kwargs.pop("steps", None)
    kwargs.pop("steps", None)
    if total is None:
        raise SystemExit("error: give --steps (the builder did not say how many steps to run)")
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = Runner(
            graph, total, out=out, device=device, progress=False, audit_every=audit_every, audit=settings, **kwargs
        )
        t0 = time.perf_counter()
        runner.run()
        seconds = time.perf_counter() - t0
    state = {
        f"{n}.{k}": v.detach().clone() for n, lv in graph.levels.items() for k, v in lv.module.state_dict().items()
    }
    return seconds, len(runner.audits), state, runner.audit_seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builder", default="e2eaug-smoke", help="e2eaug-smoke or MODULE:FUNCTION")
    parser.add_argument("--audit-every", type=int, default=50)
    parser.add_argument("--steps", type=int, default=None, help="override the builder's number of steps")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (plain, audited)")
    parser.add_argument("--no-trust", action="store_true", help="audit without the finite-difference trust check")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="folder for the builder's preparation (pre-training)")
    parser.add_argument("--out", type=Path, default=None, help="write audit_overhead.json here")
    args = parser.parse_args(argv)
    if args.audit_every < 1 or args.repeats < 1:
        raise SystemExit("error: --audit-every and --repeats must be >= 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="audit_overhead_"))
    build = e2eaug_smoke(work, args.device) if args.builder == "e2eaug-smoke" else load_builder(args.builder)
    settings = AuditSettings(trust=not args.no_trust)
    pairs, audits, equal, inside = [], 0, True, []
    for _ in range(args.repeats):
        plain, _, final_plain, _ = one_run(build, 0, settings, args.steps, args.device)
        audited, audits, final_audited, spent = one_run(build, args.audit_every, settings, args.steps, args.device)
        inside.append(spent / (audited - spent))
        equal = equal and all(torch.equal(final_plain[k], final_audited[k]) for k in final_plain)
        pairs.append((plain, audited))
    overheads = [(a - p) / p for p, a in pairs]
    result = {
        "builder": args.builder,
        "audit_every": args.audit_every,
        "trust": not args.no_trust,
        "steps": args.steps,
        "audits_per_run": audits,
        "plain_seconds": [p for p, _ in pairs],
        "audited_seconds": [a for _, a in pairs],
        "overhead_median": statistics.median(overheads),
        "overheads": overheads,
        "audit_share_median": statistics.median(inside),
        "audit_shares": inside,
        "bitwise_equal": equal,
        "torch_threads": torch.get_num_threads(),
    }
    print(
        f"audit_every={args.audit_every} ({audits} audit(s) per run, trust {'on' if settings.trust else 'off'}): "
        f"median overhead {100 * result['overhead_median']:.1f} % of the run's wall time over {args.repeats} pair(s) "
        f"(plain {statistics.median(result['plain_seconds']):.2f} s, audited "
        f"{statistics.median(result['audited_seconds']):.2f} s); time inside the audit against the rest of the audited "
        f"run {100 * result['audit_share_median']:.1f} %; final parameters bitwise equal: {equal}"
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "audit_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
