"""compare: label budgets, per-block test statistics, paired verdicts, the floor and the honest report."""

import json
import math

import numpy as np
import pytest

from landcover.experiment import (
    CompareConfig,
    _datasets,
    budget_windows,
    data_provenance,
    record_provenance,
    run_compare,
    summarise,
    time_to_reach,
    validation_auc,
    write_report,
)
from landcover.metrics import miou_from_confusion
from landcover.stats import NO_DIFFERENCE
from landcover.train import History


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    from landcover.testing.cubes import make_cube

    return make_cube(
        tmp_path_factory.mktemp("cmp") / "cube.zarr", shape=(256, 256), seed=7, classes_present=5
    )


@pytest.fixture(scope="module")
def result(cube, tmp_path_factory):
    from landcover.datasets import inspect_cube

    # mark every class as "differs outside RGB" so that present classes carry the mark
    marked = [int(c) for c in inspect_cube(str(cube)).classes]
    record_provenance(cube, classes_differ_outside_rgb=marked, clc_edition="CLC2000 (test)")
    cfg = CompareConfig(
        cubes=(str(cube),),
        out=tmp_path_factory.mktemp("cmp-out") / "report",
        models=("native", "rgb-scratch"),
        seeds=(0, 1),
        window=32,
        block=64,
        epochs=1,
        batch_size=4,
        max_train_windows=8,
        budgets=(0.25, 1.0),
        lr_select="fixed",
        n_boot=200,
        baseline_pixels=1000,
        preset="tiny",
        progress=False,
    )
    return run_compare(cfg, log=lambda _m: None)


@pytest.mark.slow
def test_budgets_are_nested_subsets_with_more_epochs(result):
    cfg = result.config
    small = result.by_model(0.25)
    full = result.by_model()
    assert sorted(small) == sorted(full) == ["native", "rgb-scratch"]
    n_full = len(_datasets(cfg, "native", 0)[0])
    assert 2 <= n_full <= 8
    for m in full:
        for r in small[m]:
            assert r.train_windows == budget_windows(n_full, 0.25) < n_full and r.budget == 0.25
            assert len(r.history.epochs) == cfg.budget_epochs(0.25) == 4
            assert "budget25" in str(r.run_dir)
        assert all(r.train_windows == n_full and len(r.history.epochs) == 1 for r in full[m])
    a = _datasets(cfg, "native", 1, 0.25)[0].windows.positions()
    b = _datasets(cfg, "native", 1, 1.0)[0].windows.positions()
    assert np.array_equal(a, b[: len(a)])  # the first windows of the same seeded order


@pytest.mark.slow
def test_block_statistics_reproduce_the_test_scores(result):
    for r in [*result.runs, *result.baselines]:
        st = r.test_blocks[3]
        assert len(st["ids"]) >= 2 and st["confusion"].shape[0] == len(st["ids"])
        cm = st["confusion"].sum(axis=0)
        assert float(miou_from_confusion(cm)) == pytest.approx(r.test["miou_l3"], abs=1e-9)
        saved = np.load(r.run_dir / "test_blocks.npz")
        assert np.array_equal(saved["l3_confusion"], st["confusion"])
        assert np.array_equal(saved["l1_ids"], st["ids"])


@pytest.mark.slow
def test_summary_verdicts_follow_the_intervals(result):
    s = summarise(result)
    assert s["reference"] == "rgb-scratch"
    assert "best_model" in s and "samples_to_90pct_of_best" not in json.dumps(s)
    arms = {c["arm"] for c in s["comparisons"]}
    assert arms == {"native", "gbm-pixels"}
    metrics = {c["metric"] for c in s["comparisons"] if c["arm"] == "native"}
    assert metrics == {"miou_l1", "miou_l2", "miou_l3", "mae_present_l3"}
    floor = s["floor_comparisons"]  # every deep arm against the floor, at every level
    assert {(c["arm"], c["metric"]) for c in floor} == {
        (m, f"miou_l{lv}") for m in ("native", "rgb-scratch") for lv in (1, 2, 3)
    }
    assert all(c["reference"] == "gbm-pixels" for c in floor)
    for c in [*s["comparisons"], *floor]:
        assert c["seeds"] == [0, 1] and len(c["per_seed_diff"]) == 2
        assert c["ci_low"] <= c["diff"] <= c["ci_high"] or math.isclose(c["ci_low"], c["ci_high"])
        excl = c["ci_low"] > 0 or c["ci_high"] < 0
        assert (c["verdict"] != NO_DIFFERENCE) == excl
    if s["best_model"] is not None:
        assert s["best_model"] in ("native", "rgb-scratch")
        assert all(c["ci_low"] > 0 for c in s["top_vs_others"])
    else:
        assert not all(c["ci_low"] > 0 for c in s["top_vs_others"])
    for m, e in s["models"].items():
        for lv in (1, 2, 3):
            iv = e["test_ci"][f"miou_l{lv}"]
            assert iv["low"] <= iv["estimate"] <= iv["high"]
            assert iv["estimate"] == pytest.approx(e["test"][f"miou_l{lv}"]["mean"])
        assert e["test"]["mae_present_l3"]["mean"] >= e["test"]["mae_l3"]["mean"]  # absent classes dilute
        assert set(e["speed"]["thresholds"]) == {"0.1", "0.2", "0.3"}
        assert [p["budget"] for p in s["budgets"][m]] == [0.25, 1.0]
    assert s["floor"]["model"] == "gbm-pixels" and s["floor"]["hparams"][0]["pixels"] <= 1000
    assert s["data"]["synthetic"] is True
    assert s["data"]["classes_differ_outside_rgb"] == sorted(result.class_codes)
    assert s["arms"] == {
        "requested": ["native", "rgb-scratch"],
        "ran": ["native", "rgb-scratch"],
        "not_run": {},
    }


@pytest.mark.slow
def test_report_is_honest(result, tmp_path):
    report = write_report(result, tmp_path / "rep")
    text = report.read_text()
    assert text.startswith(
        "# native vs rgb-scratch, with a gbm-pixels floor: phase-1 comparison on synthetic data"
    )
    assert "**The data are SYNTHETIC**" in text and "CLC2000 (test)" in text
    assert "**Only 2 seed(s).**" in text
    assert "## Verdicts (paired, against rgb-scratch)" in text and "mIoU L1 | mIoU L2 | mIoU L3" in text
    assert "Every deep arm against the non-deep floor (gbm-pixels)" in text
    assert "| rgb-scratch | miou_l3 |" in text  # a row of the floor table (the reference has none above)
    assert " †" in text  # classes recorded as differing outside RGB are marked
    assert "90 % of the best" not in text
    for name in ("score_vs_budget.png", "confusion_native.png", "confusion_gbm-pixels.png",
                 "learning_curves_samples.png", "per_class_iou.png", "metrics.json"):  # fmt: skip
        assert (tmp_path / "rep" / name).stat().st_size > 0, name
    if json.loads((tmp_path / "rep" / "metrics.json").read_text())["best_model"] is None:
        assert "No arm is named best" in text


def test_speed_helpers_on_a_hand_made_history():
    h = History(
        samples=[
            {"samples_seen": 0, "val_miou_l3": 0.0, "time": 0.0},
            {"samples_seen": 10, "val_miou_l3": 0.2, "time": 1.5},
            {"samples_seen": 20, "val_miou_l3": 0.4, "time": 3.0},
        ]
    )
    assert validation_auc(h) == pytest.approx(0.2)  # (0.1 * 10 + 0.3 * 10) / 20
    assert time_to_reach(h, "val_miou_l3", 0.2) == (10, 1.5)
    assert time_to_reach(h, "val_miou_l3", 0.5) == (None, None)
    assert math.isnan(validation_auc(History()))


def test_provenance_of_a_cube_that_records_nothing(tmp_path):
    from landcover.testing.cubes import make_cube

    path = make_cube(tmp_path / "c.zarr", shape=(64, 64), chunks=32)
    meta = json.loads((path / "zarr.json").read_text())
    for key in ("synthetic_seed", "title"):
        meta["attributes"].pop(key, None)
    (path / "zarr.json").write_text(json.dumps(meta))
    assert data_provenance([str(path)])["synthetic"] is None
    record_provenance(path, synthetic=False, clc_edition="CLC2018")
    prov = data_provenance([str(path)])
    assert prov["synthetic"] is False and prov["cubes"][0]["clc_edition"] == "CLC2018"
    from landcover.experiment import _clc_edition

    assert _clc_edition({"name": "U2018_CLC2018_V2020_20u1.tif"}) == "CLC2018 (from the file name)"
    assert _clc_edition("clc.tif") is None


def test_budget_options_are_validated():
    with pytest.raises(ValueError, match="budgets"):
        CompareConfig(budgets=(0.0, 1.0))
    with pytest.raises(ValueError, match="distinct"):
        CompareConfig(budgets=(0.5, 0.5))
    assert (
        CompareConfig(epochs=6).budget_epochs(0.01) == 24 and CompareConfig(epochs=6).budget_epochs(0.5) == 12
    )
