"""RM-MetaL's report on hand-made rows: which claims it tests, the paired differences per seed, the
verdicts, and the tables results.md shows."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
from reports import rmmetal as report  # noqa: E402

MEMORY_CLAIM = {"k": 5, "max_ratio": 0.5, "against": ["maml", "anil", "itd-bio"]}
ACCURACY = {  # seed -> method -> test accuracy
    0: {
        "rm-metal": 0.80,
        "itd-bio": 0.75,
        "anil": 0.70,
        "maml": 0.50,
        "rm-metal-no-warm-start": 0.81,
        "untrained": 0.4,
    },
    1: {
        "rm-metal": 0.82,
        "itd-bio": 0.80,
        "anil": 0.71,
        "maml": 0.52,
        "rm-metal-no-warm-start": 0.80,
        "untrained": 0.4,
    },
    2: {
        "rm-metal": 0.78,
        "itd-bio": 0.70,
        "anil": 0.69,
        "maml": 0.51,
        "rm-metal-no-warm-start": 0.79,
        "untrained": 0.4,
    },
}
MEMORY = {
    "rm-metal": (10, 10, 10, 10.5),
    "itd-bio": (10, 50, 100, 200),
    "anil": (10, 40, 80, 160),
    "maml": (30, 90, 180, 350),
}


def rows():
    out = []
    for seed, accuracy in ACCURACY.items():
        for method, value in accuracy.items():
            out.append({"method": method, "seed": seed, "metric": "test_accuracy", "value": value, "ci95": 0.01})
            if method != "untrained":  # at equal time every baseline scores 0.1 less than at T
                less = 0.0 if method.startswith("rm-metal") else 0.1
                out.append(
                    {"method": method, "seed": seed, "metric": "test_accuracy_at_equal_time", "value": value - less}
                )
        for method, peaks in MEMORY.items():
            out += [
                {"method": method, "seed": seed, "metric": "peak_memory_bytes", "k": k, "value": p}
                for k, p in zip((1, 5, 10, 20), peaks)
            ]
    return out


@pytest.fixture(scope="module")
def claims():
    methods = ["rm-metal", "itd-bio", "anil", "maml", "rm-metal-no-warm-start"]
    return {c.test: c for c in report.claims(rows(), methods, "untrained", MEMORY_CLAIM)}


def test_accuracy_claims_are_paired_differences_in_points(claims):
    itd = claims["RM-MetaL − ITD-BiO, test accuracy after the same outer steps"]
    assert itd.per_seed == pytest.approx({0: 5.0, 1: 2.0, 2: 8.0})
    # mean 5, std 3 over 3 seeds: t(0.975, 2) = 4.303 -> half-width 7.45, so the interval includes 0
    mean, low, high = itd.interval()
    assert mean == pytest.approx(5.0) and low == pytest.approx(5.0 - 4.3027 * 3 / 3**0.5, abs=1e-3)
    assert itd.verdict() == "not reproduced (the interval includes 0)"
    anil = claims["RM-MetaL − ANIL, test accuracy after the same outer steps"]
    assert anil.per_seed == pytest.approx({0: 10.0, 1: 11.0, 2: 9.0}) and anil.verdict() == "reproduced"
    equal = claims["RM-MetaL − ITD-BiO, test accuracy at an equal wall-clock budget"]
    assert equal.per_seed == pytest.approx({0: 15.0, 1: 12.0, 2: 18.0}) and equal.verdict() == "reproduced"
    warm = claims["RM-MetaL − RM-MetaL without warm starts (the released code), test accuracy"]
    assert warm.per_seed == pytest.approx({0: -1.0, 1: 2.0, 2: -1.0})
    untrained = claims["RM-MetaL − untrained backbone, test accuracy"]
    assert untrained.per_seed == pytest.approx({0: 40.0, 1: 42.0, 2: 38.0})


def test_memory_claims(claims):
    flat = claims["1.10 − RM-MetaL's peak at K=20 / K=1"]
    assert flat.per_seed == pytest.approx(dict.fromkeys(ACCURACY, 0.05)) and flat.verdict() == "reproduced"
    grows = claims["smallest peak at K=20 / K=1 of the three − 1.10"]
    assert grows.per_seed == pytest.approx(dict.fromkeys(ACCURACY, 350 / 30 - 1.1))  # MAML grows least
    k5 = claims["0.5 − largest RM-MetaL / baseline peak at K=5"]
    assert k5.per_seed == pytest.approx(dict.fromkeys(ACCURACY, 0.5 - 10 / 40))  # ANIL is the closest at K = 5


def test_without_a_baseline_or_memory_its_claims_are_left_out():
    only = [
        r for r in rows() if r["metric"] != "peak_memory_bytes" and r["method"] in ("rm-metal", "anil", "untrained")
    ]
    tests = [c.test for c in report.claims(only, ["rm-metal", "anil"], "untrained", MEMORY_CLAIM)]
    assert tests == [
        "RM-MetaL − ANIL, test accuracy after the same outer steps",
        "RM-MetaL − ANIL, test accuracy at an equal wall-clock budget",
        "RM-MetaL − untrained backbone, test accuracy",
    ]
