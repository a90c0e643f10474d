"""Regenerate the committed study reports: every recipe's ``--preset study`` into ``docs/results/<recipe>/``.

    python benchmarks/studies.py                      # all five recipes, one after the other
    python benchmarks/studies.py --recipe taskcorr    # one (or several) of them
    python benchmarks/studies.py --resume             # continue interrupted studies (finished runs are kept)

Each study is sized to show its paper's main effects on two CPU cores within an hour (see the
recipe's page in docs/recipes/). The script runs the recipe as its own process, so a study sees
exactly what a user's command sees, with its run folders (checkpoints, logs) under
``runs/studies/<recipe>/``; the report — ``results.md``, ``results.json`` and ``figures/`` — is then
copied to ``docs/results/<recipe>/`` and the wall time of each study is recorded in
``docs/results/README.md``. Studies are never run by the
test suite; ``tests/test_study_plans.py`` checks that each study's plan is the one its page states.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("e2eaug", "rmmetal", "dumeta", "metarecon", "taskcorr")
RESULTS = ROOT / "docs" / "results"
RUNS = ROOT / "runs" / "studies"
REPORT_FILES = ("results.md", "results.json", "figures")
CODE_FOLDERS = ("engines", "problems", "recipes", "benchmarks")  # what a study's figures depend on


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes: a study's CPU time does not grow when
    other jobs share the machine, its wall time does."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class LoadSampler:
    """The machine's mean 1-minute load average while a study runs (sampled every 30 s), so that a wall
    time measured beside other jobs says so: on two cores a load near 1 means the study had a core to
    itself, near 2 or more that it shared the machine."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else float("nan")


def code_version() -> str:
    """The commit the study runs (``git rev-parse --short HEAD``), with ``+changes`` when tracked code
    differs from it (reports written under docs/ by an earlier study of the same command do not count):
    a report says which code produced it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_FOLDERS],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if changed else "")


def run_study(recipe: str, resume: bool, extra: list[str]) -> dict[str, object]:
    """Run one recipe's study preset (runs under runs/studies/<recipe>), copy its report to
    docs/results/<recipe>; returns what the index records of it (wall and CPU time in seconds, the mean
    load, the machine, the threads, the code). Without ``resume`` an earlier study's run folders are
    removed first, so the report is regenerated from scratch."""
    out = RUNS / recipe
    if out.exists() and not resume:
        print(f"== removing the earlier study in {out} (pass --resume to continue it instead)")
        shutil.rmtree(out)
    command = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), "--preset", "study", "--out", str(out)]
    if resume:
        command.append("--resume")
    command += ["--no-progress", *extra]
    print(f"== {' '.join(command[1:])}", flush=True)
    code = code_version()
    t0 = time.perf_counter()
    cpu0 = _children_cpu_s()
    with LoadSampler() as load:
        subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"})
    record = {
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "cpu_time_s": round(_children_cpu_s() - cpu0, 1),
        "mean_load": round(load.mean(), 2),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
        "code": code,
    }
    report = RESULTS / recipe
    if report.exists():
        shutil.rmtree(report)
    report.mkdir(parents=True)
    for name in REPORT_FILES:
        source = out / name
        if source.is_dir():
            shutil.copytree(source, report / name)
        elif source.is_file():
            shutil.copy2(source, report / name)
    return record


def write_index(records: dict[str, dict]) -> Path:
    """docs/results/README.md: one line per study with its times and code, then every claims table.
    ``records`` (from :func:`run_study`) replace those of the same recipes in docs/results/times.json."""
    index = RESULTS / "times.json"
    known = json.loads(index.read_text()) if index.is_file() else {}
    known.update(records)
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    (RESULTS / "README.md").write_text("\n".join(index_lines(known)) + "\n")
    return RESULTS / "README.md"


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None or seconds != seconds else f"{seconds / 60:.0f} min"


def claims_lines(results_md: str) -> list[str]:
    """The claims table of a study's results.md (the first table whose header starts with
    ``| claim (paper) |``, as ``recipes/reporting.claims_table`` writes it); [] if it has none."""
    lines = results_md.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| claim (paper) |")), None)
    if start is None:
        return []
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def index_lines(known: dict[str, dict]) -> list[str]:
    """docs/results/README.md: the wall time of each study, then every study's claims table, copied
    from its results.md so that the index never disagrees with the reports."""
    lines = [
        "# Study reports",
        "",
        "Regenerate with `python benchmarks/studies.py` (all) or `python benchmarks/studies.py --recipe NAME`;",
        "`python benchmarks/studies.py --index-only` rewrites this page from the reports already here.",
        "Each folder holds the recipe's `results.md` (claims with paired differences over seeds, 95 %",
        "intervals and verdicts, then the paper-style tables), `results.json` and `figures/`.",
        "",
        "Wall and CPU times are of the whole study (`benchmarks/studies.py`), with the machine's CPU count,",
        "the threads the study was given (OMP_NUM_THREADS) and the mean 1-minute load average while it ran.",
        "A load above the CPU count means the study shared the machine with other jobs, so its wall time is",
        "longer than it would be alone; its CPU time (user + system, all threads) is not, and with one",
        "thread it is what the study takes on an idle machine. `code` is the commit the study ran;",
        "`git log --oneline CODE..HEAD -- engines problems recipes` lists what changed in the code since.",
        "",
        "The figures are float32 training results, so another thread count or CPU changes their last digits.",
        "A calibration: the E2EAug study rerun at commit 7d13cec with torch's default two threads on the idle",
        "two-core machine (`python recipes/e2eaug.py --preset study --out DIR`) took 19.5 min of wall time",
        "(against 27 min of CPU time with one thread above), moved the paired differences of its claims",
        "table by at most 0.013 Jaccard and changed no verdict.",
        "",
        "| recipe | report | wall time | CPU time | CPUs | threads | mean load | code |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe in RECIPES:
        if recipe in known:
            k = known[recipe]
            lines.append(
                f"| {recipe} | [{recipe}/results.md]({recipe}/results.md) | {k['wall_time_s'] / 60:.0f} min"
                f" | {_minutes(k.get('cpu_time_s'))} | {k['cpus']} | {k.get('threads', '?')} | {k.get('mean_load', '?')}"
                f" | {k.get('code', '?')} |"
            )
    notes = [f"- {recipe}: {known[recipe]['note']}" for recipe in RECIPES if known.get(recipe, {}).get("note")]
    if notes:
        lines += ["", *notes]
    for recipe in RECIPES:
        report = RESULTS / recipe / "results.md"
        if recipe in known and report.is_file():
            table = claims_lines(report.read_text())
            lines += ["", f"## {recipe}", "", *(table or ["(its report has no claims table)"])]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", choices=RECIPES, default=list(RECIPES), help="which studies to run")
    parser.add_argument("--resume", action="store_true", help="continue interrupted studies")
    parser.add_argument(
        "--index-only", action="store_true", help="run nothing: rewrite docs/results/README.md from the reports there"
    )
    args, extra = parser.parse_known_args(argv)
    if args.index_only:
        print(f"wrote {write_index({})}")
        return
    records: dict[str, dict] = {}
    for recipe in args.recipe:
        records[recipe] = run_study(recipe, args.resume, extra)
        print(f"== {recipe}: {records[recipe]['wall_time_s'] / 60:.1f} min", flush=True)
        write_index(records)
    print(f"wrote {write_index(records)}")


if __name__ == "__main__":
    main()
