"""recipes/reports/e2eaug.py: the paper's claims built from per-seed rows (values made up here, so the
expected differences are known), their verdicts, and the tables."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
from reports import e2eaug as report  # noqa: E402

SETS = ("isic2018", "ph2", "dermis")
BASE = {"none": 0.60, "rotate": 0.66, "flip": 0.70, "translate": 0.64, "combine": 0.68}
BASE |= {"gan_separate": 0.69, "e2eaug_frozen_arch": 0.71, "e2eaug": 0.75}


def _rows(sets=SETS, seeds=(0, 1, 2)) -> list[dict]:
    """Comparison rows: method value + 0.01·seed, and on the OOD sets Ours falls to flip's value."""
    rows = []
    for seed in seeds:
        for test_set in sets:
            for method, value in BASE.items():
                if method == "e2eaug" and test_set != "isic2018":
                    value = BASE["flip"] + (0.01 if seed == 0 else -0.01)  # no gain over flip out of distribution
                rows.append(
                    {
                        "study": "comparison",
                        "method": method,
                        "backbone": "unet",
                        "train_size": 40,
                        "test_set": test_set,
                        "metric": "jaccard",
                        "seed": seed,
                        "value": value + 0.01 * seed * (method != "e2eaug" or test_set == "isic2018"),
                    }
                )
    return rows


def _by_test(claims) -> dict:
    return {c.test: c for c in claims}


def test_claims_are_paired_differences_against_the_strongest_competitor():
    claims = _by_test(report.claims({"comparison": _rows()}, "isic2018"))
    in_dist = claims["Ours − none, in distribution"]
    assert in_dist.per_seed == pytest.approx({0: 0.15, 1: 0.15, 2: 0.15})
    best_simple = claims["Ours − best of Rotate/Flip/Translate/Combine, in distribution"]
    assert best_simple.per_seed == pytest.approx({0: 0.05, 1: 0.05, 2: 0.05})  # flip is the strongest
    assert in_dist.verdict() == best_simple.verdict() == "reproduced"
    ood = claims["Ours − best of Rotate/Flip/Translate/Combine, out of distribution"]
    # seed 0: Ours = flip + 0.01; seeds 1, 2: Ours = flip(seed) − 0.01 − 0.01·seed
    assert ood.per_seed == pytest.approx({0: 0.01, 1: -0.02, 2: -0.03})
    assert ood.verdict() == "not reproduced (the interval includes 0)"
    search = claims["Ours − Ours (A frozen), all test sets"]
    assert search.per_seed[0] == pytest.approx((0.04 + 2 * (0.70 + 0.01 - 0.71)) / 3)


def test_out_of_distribution_claims_without_ood_sets_are_not_testable():
    claims = report.claims({"comparison": _rows(sets=("isic2018",))}, "isic2018")
    ood = [c for c in claims if c.test.endswith("out of distribution")]
    assert len(ood) == 3 and all(
        c.verdict() == "not testable at this scale: no out-of-distribution test set is available for isic2018"
        for c in ood
    )


def test_claims_need_the_methods_they_compare():
    rows = [r for r in _rows() if r["method"] in ("none", "e2eaug")]
    claims = report.claims({"comparison": rows}, "isic2018")
    assert [c.test for c in claims] == ["Ours − none, in distribution", "Ours − none, out of distribution"]


def test_one_seed_is_not_enough_for_a_verdict():
    claims = report.claims({"comparison": _rows(seeds=(0,))}, "isic2018")
    assert {c.verdict() for c in claims} == {
        "not testable at this scale: 1 seed(s), at least 3 are needed for an interval"
    }


def test_the_comparison_table_puts_the_paper_number_beside_ours():
    rows = [
        {"method": m, "backbone": "unet", "train_size": 40, "test_set": "isic2018", "value": v, "std": 0.0, "n": 3}
        for m, v in (("none", 0.5), ("e2eaug", 0.6))
    ]
    paper = {"table": "Table 2", "rows": [{**rows[1], "value": 0.673}]}
    lines = report.comparison_section("Comparison", rows, [], paper)
    assert "| Ours-UNet | 0.600 ± 0.000 (0.673) |" in lines and "| U-Net | 0.500 ± 0.000 |" in lines
