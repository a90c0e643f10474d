"""The README's example: it is the file examples/reweighting.py, it runs, it learns, it matches its golden."""

import re
import runpy
from pathlib import Path

import pytest

from engines.golden import check_golden, golden_trace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "reweighting.py"


def test_readme_shows_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert EXAMPLE.read_text() in blocks, "README's example differs from examples/reweighting.py"


def test_example_runs_and_down_weights_the_flipped_labels(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(EXAMPLE), run_name="__main__")
    weight, flipped = ns["weight"], ns["flipped"]
    assert ns["result"].best["metrics"]["val_acc"] > 0.9
    assert weight[flipped].mean() < 0.5 * weight[~flipped].mean()
    assert (tmp_path / "runs" / "reweighting" / "checkpoint_latest.pt").is_file()
    assert "hypergradient paths" in capsys.readouterr().out


@pytest.mark.golden
def test_example_level_outputs_match_golden(update_goldens):
    trace = golden_trace(lambda: runpy.run_path(str(EXAMPLE), run_name="example")["g"], 8)
    check_golden(
        trace, ROOT / "assets" / "goldens" / "readme_reweighting.json", rtol=1e-9, atol=1e-12, update=update_goldens
    )


def test_golden_check_catches_a_change_and_explains_how_to_update(tmp_path):
    trace = {"lvl": {"loss": [1.0, 0.5], "output": {"mean": 0.1, "std": 1.0, "min": -1.0, "max": 1.0, "l2": 3.0}}}
    path = tmp_path / "g.json"
    check_golden(trace, path, update=True)
    check_golden(trace, path)  # identical: passes
    check_golden({"lvl": {**trace["lvl"], "loss": [1.0, 0.5 + 1e-9]}}, path)  # within tolerance
    changed = {"lvl": {**trace["lvl"], "loss": [1.0, 0.51]}}
    with pytest.raises(AssertionError, match=r"(?s)lvl\.loss\[1\]: 0\.51 != 0\.5.*--update-goldens"):
        check_golden(changed, path)
    with pytest.raises(AssertionError, match="missing"):
        check_golden(trace, tmp_path / "absent.json")
