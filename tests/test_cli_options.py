"""Shared option blocks of the CLI: one meaning per option name, cluster options on compare,
input checks before any cluster starts, experiment tracking from the command line and config files.

Synthetic cubes only (landcover.testing.cubes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from landcover.cli import build_parser, main
from landcover.testing.cubes import make_cube

CODES = (111, 211, 311, 512)


def _parsers(parser: argparse.ArgumentParser, path: str = "landcover") -> list[tuple[str, Any]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _parsers(child, f"{path} {name}")
    return out


def _group_of(parser: argparse.ArgumentParser, option: str) -> str | None:
    for group in parser._action_groups:
        if any(option in a.option_strings for a in group._group_actions):
            return group.title
    return None


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli-options")
    return make_cube(d / "c.zarr", shape=(128, 128), classes=CODES, classes_present=4, chunks=64, seed=2)


def test_workers_means_dask_workers_in_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    seen = []
    for path, p in _parsers(parser):
        for action in p._actions:
            if "--workers" in action.option_strings and action.help != argparse.SUPPRESS:
                seen.append(path)
                assert action.dest == "workers", path
                assert _group_of(p, "--workers") == "Dask cluster", path
    assert {"landcover compare", "landcover predict", "landcover cube build"} <= set(seen)
    assert "landcover train" not in seen and "landcover fetch download" not in seen
    # DataLoader processes are --loader-workers, the same option in train and compare
    train = parser.parse_args(["train", "c.zarr", "--loader-workers", "2"])
    compare = parser.parse_args(["compare", "c.zarr", "--loader-workers", "2", "--workers", "3"])
    assert train.loader_workers == compare.loader_workers == 2 and compare.workers == 3
    assert capsys.readouterr().err == ""
    # the old spellings still work, with a deprecation message
    assert parser.parse_args(["train", "c.zarr", "--workers", "4"]).loader_workers == 4
    err = capsys.readouterr().err
    assert "--workers is deprecated, use --loader-workers" in err
    assert parser.parse_args(["fetch", "download", "--workers", "3"]).downloads == 3
    assert "--workers is deprecated, use --downloads" in capsys.readouterr().err


def test_compare_takes_the_shared_cluster_options() -> None:
    parser = build_parser()
    subs = dict(_parsers(parser))

    def cluster_options(p: argparse.ArgumentParser) -> set[str]:
        group = next(g for g in p._action_groups if g.title == "Dask cluster")
        return {s for a in group._group_actions for s in a.option_strings}

    assert cluster_options(subs["landcover compare"]) == cluster_options(subs["landcover predict"])
    args = parser.parse_args(
        ["compare", "c.zarr", "--scheduler", "local", "--workers", "2", "--threads-per-worker", "1",
         "--memory-limit", "1GiB", "--processes", "--dashboard-address", "none"]
    )  # fmt: skip
    from landcover.cli._cluster import cluster_options_from_args

    options = cluster_options_from_args(args)
    assert (options.kind, options.workers, options.threads_per_worker) == ("local", 2, 1)
    assert options.processes and options.memory_limit == "1GiB" and options.dashboard_address == "none"
    assert cluster_options_from_args(parser.parse_args(["compare", "c.zarr"])).kind == "none"  # default


def test_compare_runs_on_a_local_cluster(
    cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    argv = ["compare", str(cube), "--out", str(out), "--models", "native", "--seeds", "0", "--budgets", "1",
            "--epochs", "1", "--window", "16", "--batch-size", "8", "--lr-select", "fixed", "--lr", "1e-3",
            "--preset", "tiny", "--no-baseline", "--n-boot", "100", "--device", "cpu",
            "--scheduler", "local", "--workers", "1", "--threads-per-worker", "1"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Dask dashboard: http://127.0.0.1:" in captured.err
    assert (out / "report.md").is_file() and f"report: {out}" in captured.out


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "{missing}", "--scheduler", "local"],
        ["train", "--distributed", "{missing}"],
        ["train", "{missing}"],
    ],
    ids=["compare", "train-distributed", "train"],
)
def test_input_checks_come_before_the_cluster(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.zarr"
    argv = [a.format(missing=missing) for a in argv] + ["--out", str(tmp_path / "out")]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert f"{missing}: no such cube store" in err
    for text in (out, err):  # no dashboard link (train --distributed used to log it on stdout)
        assert "dashboard" not in text.lower() and "Dask scheduler" not in text
    assert not (tmp_path / "out").exists()


def test_no_cubes_is_one_line_before_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--scheduler", "local", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "landcover: no cubes given (build one with `landcover cube build`)"


@pytest.mark.parametrize("package", ["mlflow", "tensorboard"])
def test_tracking_options_name_a_missing_package(
    package: str, cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here: the logging path is tested instead")
    flag = ["--mlflow", (tmp_path / "mlruns").as_uri()] if package == "mlflow" else ["--tensorboard"]
    out = tmp_path / "run"
    for argv in (["train"], ["compare", "--scheduler", "local"]):
        assert main([*argv, str(cube), "--out", str(out), *flag]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"needs the {package} package" in err, err
        assert "dashboard" not in err.lower() and not out.exists()
    # the same key in a config file
    cfg = tmp_path / "c.toml"
    value = f'"{(tmp_path / "mlruns").as_uri()}"' if package == "mlflow" else "true"
    cfg.write_text(f'[train]\ncubes = ["{cube}"]\n{package} = {value}\n', encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 1
    assert f"needs the {package} package" in capsys.readouterr().err


def test_mlflow_logs_a_training_run(cube: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("mlflow is not installed (optional): the missing-package error is tested instead")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file:// stores behind this switch
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "run"
    argv = ["train", str(cube), "--out", str(out), "--epochs", "1", "--window", "16", "--batch-size", "8",
            "--device", "cpu", "--mlflow", uri, "-q"]  # fmt: skip
    assert main(argv) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("landcover")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["model"] == "native"
    test_metrics = json.loads((out / "test_metrics.json").read_text())
    assert run.data.metrics["test/miou_l3"] == pytest.approx(test_metrics["miou_l3"])
    history = client.get_metric_history(run.info.run_id, "epoch/train_loss")
    assert len(history) == 1 and history[0].step > 0


def test_shared_options_are_defined_once() -> None:
    subs = dict(_parsers(build_parser()))

    def definition(command: str, option: str, *, with_help: bool = True) -> tuple[Any, ...]:
        (a,) = [a for a in subs[f"landcover {command}"]._actions if option in a.option_strings]
        return (type(a).__name__, a.type, a.metavar, str(a.choices), a.help if with_help else None)

    shared = {
        "--epochs": ("train", "compare", "demo"),
        "--batch-size": ("train", "compare"),
        "--level": ("train", "compare"),
        "--device": ("train", "compare", "demo"),
        "--seeds": ("compare", "demo"),
        "--imagenet-weights": ("train", "demo"),
        "--loader-workers": ("train", "compare"),
        "--tensorboard": ("train", "compare"),
        "--mlflow": ("train", "compare"),
    }
    for option, commands in shared.items():
        assert len({definition(c, option) for c in commands}) == 1, option
    # transfer's built-in defaults: same parsing, its own default in the help
    for option in ("--seeds", "--device"):
        assert definition("transfer", option, with_help=False) == definition(
            "compare", option, with_help=False
        )


def test_tensorboard_logs_a_training_run(cube: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed (optional): the missing-package error is tested instead")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = tmp_path / "train.toml"
    cfg.write_text("[train]\ntensorboard = true\nepochs = 1\nwindow = 16\nbatch_size = 8\n", encoding="utf-8")
    assert main(["train", str(cube), "--out", str(out), "--config", str(cfg), "--device", "cpu", "-q"]) == 0
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"epoch/train_loss", "samples/train_loss"} <= set(events.Tags()["scalars"])
