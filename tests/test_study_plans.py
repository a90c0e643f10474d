"""Each recipe's ``--preset study`` is what its documentation says it is.

The study presets are never run in CI (each takes up to an hour on two cores); what CI can check is
that the plan a user would run — methods, seeds, steps, sizes — is exactly the table under
``## Study preset`` in ``docs/recipes/<recipe>.md``, and that it has the three seeds the paired
differences of the claims table need.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

RECIPES = ("e2eaug", "rmmetal", "dumeta", "metarecon", "taskcorr")


def study_section(recipe: str) -> list[str]:
    """The lines of the ``## Study preset`` section of the recipe's documentation page."""
    page = ROOT / "docs" / "recipes" / f"{recipe}.md"
    lines = page.read_text().splitlines()
    try:
        start = lines.index("## Study preset")
    except ValueError:
        pytest.fail(f"{page} has no '## Study preset' section")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line.rstrip() for line in lines[start + 1 : end]]


@pytest.fixture(params=RECIPES)
def study_plan(request: pytest.FixtureRequest):
    recipe = importlib.import_module(request.param)
    return request.param, recipe.make_plan(recipe.parse_args(["--preset", "study"]))


def test_study_plan_is_the_documented_table(study_plan) -> None:
    name, plan = study_plan
    table = plan.markdown()
    section = study_section(name)
    starts = [i for i, line in enumerate(section) if line == table[0]]
    assert any(section[i : i + len(table)] == table for i in starts), (
        f"docs/recipes/{name}.md '## Study preset' does not contain the plan of --preset study verbatim; "
        "expected the lines:\n" + "\n".join(table)
    )


def test_study_plan_has_three_seeds_for_every_method(study_plan) -> None:
    name, plan = study_plan
    assert plan.preset == "study" and plan.recipe == name
    for method in plan.methods:
        seeds = {run.seed for run in plan.runs if run.method == method}
        assert len(seeds) >= 3, f"{name}: method {method!r} has seeds {sorted(seeds)}; a claim needs >= 3"


def test_claims_lines_takes_the_claims_table_only():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    studies = importlib.import_module("studies")
    report = "# R\n\n| a | b |\n|---|---|\n\n| claim (paper) | test |\n|---|---|\n| x | +0.1 |\n\ntext\n| claim (paper) | other |\n"
    assert studies.claims_lines(report) == ["| claim (paper) | test |", "|---|---|", "| x | +0.1 |"]
    assert studies.claims_lines("# no table\n") == []


def test_results_index_quotes_every_committed_claims_table():
    """docs/results/README.md repeats each committed report's claims table verbatim (it is rewritten by
    ``python benchmarks/studies.py --index-only``), so the index cannot drift from the reports."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    studies = importlib.import_module("studies")
    results = ROOT / "docs" / "results"
    index = (results / "README.md").read_text()
    for recipe in RECIPES:
        report = results / recipe / "results.md"
        if report.is_file():
            table = studies.claims_lines(report.read_text())
            assert table, f"{report} has no claims table"
            assert "\n".join(table) in index, f"docs/results/README.md does not quote {report}'s claims table"
