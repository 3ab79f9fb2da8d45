"""`dtifast report`: the outlier rule on the paper's numbers, aggregation, and the command on JSON files."""
import json

import pytest

from dtifast.cli import main
from dtifast.report import aggregate, find_outlier, format_report, load_results


def test_outlier_rule_on_the_papers_multi_dsprites_runs():
    # Supplementary: one of 5 runs filtered for its loss, 1.93e-3 against {1.51, 1.49, 1.52, 1.57}e-3.
    losses = [1.51e-3, 1.93e-3, 1.49e-3, 1.52e-3, 1.57e-3]
    assert find_outlier(losses) == 1


@pytest.mark.parametrize("losses", [
    [1.51e-3, 1.49e-3, 1.52e-3, 1.57e-3, 1.55e-3],   # ordinary spread
    [1.0, 5.0],                                       # too few runs to tell
    [1.000, 1.000, 1.000, 1.05],                      # MAD 0 but only 5 % worse: not material
])
def test_no_outlier(losses):
    assert find_outlier(losses) is None


def test_identical_runs_and_one_bad_one():
    assert find_outlier([1.0, 1.0, 1.0, 2.0]) == 3


def test_bad_losses():
    with pytest.raises(ValueError, match="finite"):
        find_outlier([1.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="1-D"):
        find_outlier([[1.0, 2.0]])


def results(losses, miou):
    return [{"run": f"r{i}", "loss": l, "miou": m, "macc": m} for i, (l, m) in enumerate(zip(losses, miou))]


def test_aggregate_with_and_without_the_outlier():
    rep = aggregate(results([1.5, 1.5, 1.6, 3.0], [0.8, 0.9, 0.7, 0.1]))
    assert rep.metrics == ["macc", "miou"] and rep.outlier == 3
    mean, std = rep.all_runs["miou"]
    assert mean == pytest.approx(0.625) and std == pytest.approx(0.3112474899497183)
    mean, std = rep.without_outlier["miou"]
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.0816496580927726)
    text = format_report(rep)
    assert "r3" in text and "<- outlier" in text and "without outlier (3)" in text
    assert "62.5 ± 31.1" in text and "80.0 ± 8.2" in text
    with pytest.raises(ValueError, match="missing"):
        aggregate(results([1.0, 1.0], [0.5, 0.5]), metrics=["ari_fg"])


def test_report_command(tmp_path, capsys):
    runs = []
    for i, (loss, miou) in enumerate([(1.51e-3, 0.84), (1.93e-3, 0.40), (1.49e-3, 0.85), (1.52e-3, 0.83)]):
        d = tmp_path / f"seed{i}"
        d.mkdir()
        (d / "eval.json").write_text(json.dumps({"loss": loss, "miou": miou, "macc": miou + 0.05}))
        runs.append(str(d))
    assert main(["report", *runs, "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "seed1" in out and "<- outlier" in out and "without outlier (3)" in out
    assert json.loads((tmp_path / "r.json").read_text())["outlier"] == runs[1]
    assert [r["run"] for r in load_results(runs)] == runs
    (tmp_path / "seed0" / "eval.json").write_text("{not json")
    assert main(["report", *runs]) == 2
    assert "not valid JSON" in capsys.readouterr().err
