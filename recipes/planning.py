"""The planning layer every recipe shares: which runs a recipe makes, where, and which are done.

A recipe compares methods over seeds, sometimes over variants too (λ, a bank capacity, K...). A
:class:`Plan` lists those runs (:class:`RunSpec`) with the settings that fix them (steps, sizes,
subjects...); :func:`execute` trains each run in its own folder ``<out>/runs/<run name>/``, skips
runs whose ``result.json`` exists, and refuses a finished run that was made with other settings
(so ``--resume`` never mixes two configurations into one table). Interrupted runs resume from
their checkpoints (:func:`has_checkpoint` tells the trainer).

The plan is also what the documentation states: :meth:`Plan.describe` is the table each recipe's
page quotes, and the tests compare the two without running anything.

Example::

    plan = Plan("e2eaug", "smoke", runs=grid(["none", "e2eaug"], seeds=[0, 1, 2]), settings={"steps": 60})
    results = execute(plan, out, train=lambda spec, run_dir: {...}, resume=args.resume)
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RESULT_FILE",
    "STARTED_FILE",
    "Plan",
    "RunSpec",
    "execute",
    "finished",
    "grid",
    "has_checkpoint",
    "record",
    "started",
]

RESULT_FILE = "result.json"
"""What a finished run leaves in its folder: its spec, the settings it was made with, its result."""


@dataclass(frozen=True)
class RunSpec:
    """One training run: a method, a seed and optional variant settings (``("lambda", 0.5)``...)."""

    method: str
    seed: int
    variant: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """Folder name, e.g. ``e2eaug__lambda0.5__seed1``."""
        parts = [self.method, *(f"{k}{_short(v)}" for k, v in self.variant), f"seed{self.seed}"]
        return "__".join(parts)

    def get(self, key: str, default: Any = None) -> Any:
        """A variant setting, or ``default`` when the run does not vary it."""
        return dict(self.variant).get(key, default)

    def as_row(self) -> dict[str, Any]:
        """``{"method": ..., "seed": ..., **variant}``: the keys a result row is identified by."""
        return {"method": self.method, "seed": self.seed, **dict(self.variant)}


def grid(
    methods: Iterable[str], seeds: Iterable[int], variants: Mapping[str, Sequence[Any]] | None = None
) -> list[RunSpec]:
    """Every method × seed (× every combination of the variant values), seeds outermost so that a
    partial run has complete pairs."""
    keys = sorted(variants or {})
    combos = list(itertools.product(*((variants or {})[k] for k in keys))) if keys else [()]
    return [
        RunSpec(method, int(seed), tuple(zip(keys, combo))) for seed in seeds for combo in combos for method in methods
    ]


@dataclass
class Plan:
    """The runs of one recipe invocation and the settings that fix them.

    Attributes:
        recipe: the recipe's name (``e2eaug``...).
        preset: the preset it expands (``smoke``, ``study``...).
        runs: the training runs, in the order they are made.
        settings: everything else that fixes the runs' results (steps, sizes, learning rates); two
            runs of the same spec made with different settings are different results.
    """

    recipe: str
    preset: str
    runs: list[RunSpec]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.runs))

    @property
    def seeds(self) -> list[int]:
        return list(dict.fromkeys(r.seed for r in self.runs))

    def describe(self) -> dict[str, Any]:
        """What the documentation states about this plan (and a test checks): methods, seeds, the
        number of runs and the settings."""
        return {
            "recipe": self.recipe,
            "preset": self.preset,
            "methods": self.methods,
            "seeds": self.seeds,
            "runs": len(self.runs),
            **{k: _plain(v) for k, v in self.settings.items()},
        }

    def markdown(self) -> list[str]:
        """The plan as a two-column Markdown table."""
        lines = ["| setting | value |", "|---|---|"]
        for key, value in self.describe().items():
            text = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
            lines.append(f"| {key} | {text} |")
        return lines


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an interrupted run to resume (its latest or previous checkpoint)."""
    return (Path(run_dir) / "checkpoint_latest.pt").exists() or (Path(run_dir) / "checkpoint_previous.pt").exists()


def finished(run_dir: Path, spec: RunSpec | None = None, settings: Mapping[str, Any] | None = None) -> dict | None:
    """The result of a finished run in ``run_dir``, or None. With ``spec``/``settings`` given, a result
    made with other ones is refused (``SystemExit`` naming the file and the settings that differ)."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if spec is not None and saved.get("spec") != _plain(spec.as_row()):
        raise SystemExit(
            f"error: {path} holds run {saved.get('spec')}, not {spec.as_row()}; use another --out or delete it"
        )
    if settings is not None:
        made_with = saved.get("settings", {})
        now = _plain(dict(settings))
        differ = sorted(k for k in set(made_with) | set(now) if made_with.get(k) != now.get(k))
        if differ:
            what = ", ".join(f"{k}: {made_with.get(k)!r} then, {now.get(k)!r} now" for k in differ)
            raise SystemExit(
                f"error: {path} was made with other settings ({what}); --resume only continues runs made "
                "with the same settings: choose another --out or delete that folder"
            )
    return saved["result"]


STARTED_FILE = "started.json"
"""What a run leaves in its folder when it starts: its spec and the settings it is made with."""


def started(run_dir: Path, spec: RunSpec, settings: Mapping[str, Any]) -> None:
    """Call when a run starts training: records its spec and settings in ``started.json``; for a run that
    was already started (an interrupted one, about to resume from its checkpoint), refuses other ones
    (``SystemExit`` naming the file and the settings that differ), so a resumed run is never continued
    with other settings than it began with. :func:`finished` does the same for finished runs."""
    path = Path(run_dir) / STARTED_FILE
    now = {"spec": _plain(spec.as_row()), "settings": _plain(dict(settings))}
    if path.is_file():
        then = json.loads(path.read_text())
        keys = set(then["settings"]) | set(now["settings"])
        differ = sorted(k for k in keys if then["settings"].get(k) != now["settings"].get(k))
        if then["spec"] != now["spec"] or differ:
            what = ", ".join(f"{k}: {then['settings'].get(k)!r} then, {now['settings'].get(k)!r} now" for k in differ)
            raise SystemExit(
                f"error: {path}: the interrupted run in this folder was started as {then['spec']} with other "
                f"settings ({what or 'the run differs'}); it cannot be continued with these: choose another --out "
                "or delete that folder"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(now, indent=1))
    os.replace(tmp, path)


def record(run_dir: Path, spec: RunSpec, settings: Mapping[str, Any], result: Mapping[str, Any]) -> Path:
    """Write ``result.json`` atomically (temporary file, then rename): the run is finished."""
    path = Path(run_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = {"spec": _plain(spec.as_row()), "settings": _plain(dict(settings)), "result": _plain(dict(result))}
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    return path


def execute(
    plan: Plan,
    out: Path,
    train: Callable[[RunSpec, Path], Mapping[str, Any]],
    *,
    runs: Sequence[RunSpec] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every run of ``plan`` (or ``runs``, a subset) with ``train(spec, run_dir) -> result``.

    Finished runs are read back, not trained again; a finished run made with other settings is an
    error. Each result gets ``wall_time_s`` (the time this call spent training it). Returns
    ``{run name: result}``.
    """
    results: dict[str, dict[str, Any]] = {}
    todo = list(plan.runs if runs is None else runs)
    for i, spec in enumerate(todo, 1):
        run_dir = Path(out) / "runs" / spec.name
        done = finished(run_dir, spec, plan.settings)
        if done is not None:
            print(f"[{plan.recipe}] {i}/{len(todo)} {spec.name}: finished earlier, read back")
            results[spec.name] = done
            continue
        print(f"[{plan.recipe}] {i}/{len(todo)} {spec.name}")
        t0 = time.perf_counter()
        result = {**dict(train(spec, run_dir)), "wall_time_s": time.perf_counter() - t0}
        record(run_dir, spec, plan.settings, result)
        results[spec.name] = _plain(result)
    return results


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    return str(value)


def _plain(obj: Any) -> Any:
    """JSON round trip, so saved and current settings compare equal (tuples become lists...)."""
    return json.loads(json.dumps(obj, default=_default))


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
