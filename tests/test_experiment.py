"""The phase-1 comparison end to end: synthetic scene + CLC -> cube -> compare -> report."""

import json

import pytest

from landcover.cli import main
from landcover.errors import ConfigError, InputFileError
from landcover.experiment import CompareConfig, run_compare, summarise, write_report


@pytest.fixture(scope="module")
def demo_cube(tmp_path_factory):
    from landcover.cube import build_cube
    from landcover.testing.scenes import make_pair

    root = tmp_path_factory.mktemp("exp")
    # the older world with exact RGB twins: the tests below rely on classes identical in RGB
    pair = make_pair(root / "data", size=448, seed=3, overlap=0.9, cloud_fraction=0.05, world="twins")
    return build_cube([pair.scene_dir], pair.clc_path, root / "cube.zarr", progress=False, chunks=256)


@pytest.mark.slow
def test_native_beats_rgb_on_synthetic_twins(demo_cube, tmp_path):
    """The synthetic landscape has classes identical in RGB: the native model must win clearly."""
    cfg = CompareConfig(
        cubes=(str(demo_cube),),
        out=tmp_path / "report",
        models=("native", "rgb-scratch"),
        seeds=(0,),
        window=32,
        epochs=6,
        lr=5e-3,
        progress=False,
        budgets=(1.0,),
    )
    result = run_compare(cfg, log=lambda _m: None)
    report = write_report(result)
    for name in (
        "report.md",
        "metrics.json",
        "learning_curves_samples.png",
        "learning_curves_epochs.png",
        "per_class_iou.png",
        "prediction_map.png",
    ):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    native = metrics["models"]["native"]["test"]
    rgb = metrics["models"]["rgb-scratch"]["test"]
    # both models saw the same windows, split and seed
    assert metrics["models"]["native"]["train_windows"] == metrics["models"]["rgb-scratch"]["train_windows"]
    assert native["acc_l3"]["mean"] > rgb["acc_l3"]["mean"] + 0.05
    assert native["miou_l3"]["mean"] > rgb["miou_l3"]["mean"]
    text = report.read_text()
    assert "| native |" in text and "| rgb-scratch |" in text
    # named best only with an interval above 0 against every other arm and the floor
    assert metrics["best_model"] in (None, "native")
    assert metrics["floor"]["model"] == "gbm-pixels"
    for run in result.runs:
        assert (run.run_dir / "history.json").is_file()
        assert (run.run_dir / "best.pt").is_file() or (run.run_dir / "last.pt").is_file()


def test_missing_imagenet_weights_runs_rgb_under_honest_name(demo_cube, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    messages: list[str] = []
    cfg = CompareConfig(
        cubes=(str(demo_cube),),
        out=tmp_path / "r",
        models=("native", "rgb-imagenet"),
        seeds=(0,),
        window=32,
        epochs=1,
        max_train_windows=8,
        progress=False,
        budgets=(1.0,),
        baseline=False,
    )
    result = run_compare(cfg, log=messages.append)
    assert sorted({r.model for r in result.runs}) == ["native", "rgb-scratch"]
    assert any("ImageNet weights not found" in m for m in messages)
    summary = summarise(result)
    assert any("rgb-imagenet not run" in n for n in summary["notes"])
    assert all(r.train_windows == 8 for r in result.runs)
    write_report(result)
    assert "ImageNet weights not found" in (tmp_path / "r" / "report.md").read_text()


def test_imagenet_weights_from_local_file(demo_cube, tmp_path, monkeypatch):
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg = CompareConfig(
        cubes=(str(demo_cube),),
        out=tmp_path / "r",
        models=("rgb-imagenet",),
        seeds=(0,),
        window=32,
        epochs=1,
        max_train_windows=4,
        batch_size=4,
        imagenet_weights=str(weights),
        progress=False,
        budgets=(1.0,),
        baseline=False,
    )
    result = run_compare(cfg, log=lambda _m: None)
    assert result.preset == "base"
    assert [r.model for r in result.runs] == ["rgb-imagenet"]


def test_config_and_input_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="split_fractions"):
        CompareConfig(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="no cubes"):
        run_compare(CompareConfig(), log=lambda _m: None)
    with pytest.raises(InputFileError):
        run_compare(CompareConfig(cubes=(str(tmp_path / "nope.zarr"),)), log=lambda _m: None)
    assert main(["compare", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("landcover: ") and "nope.zarr" in err and len(err.strip().splitlines()) == 1


def test_train_cli_lr_find_and_outputs(demo_cube, tmp_path):
    out = tmp_path / "run"
    code = main(
        ["-q", "train", str(demo_cube), "--window", "32", "--epochs", "1", "--budget", "16", "--lr-find",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    for name in ("lr_find.png", "history.png", "history.json", "last.pt", "test_metrics.json"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert 0.0 <= metrics["acc_l3"] <= 1.0


@pytest.mark.slow
def test_demo_runs_end_to_end_small(tmp_path, capsys):
    """`make demo` in miniature: synth -> cube -> compare -> report -> prediction map."""
    code = main(
        ["-q", "demo", "--out", str(tmp_path / "demo"), "--size", "320", "--epochs", "1", "--seeds", "0"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "report:" in out
    root = tmp_path / "demo"
    assert (root / "report" / "report.md").is_file()
    assert (root / "map" / "class_map.tif").is_file() and (root / "map" / "quicklook.png").is_file()
    from landcover.store import open_cube

    assert float(open_cube(root / "cube.zarr").valid.mean()) > 0.3


@pytest.mark.cluster
@pytest.mark.slow
def test_compare_runs_on_a_local_cluster(demo_cube, tmp_path):
    """Each (model, seed) run is a task on a real LocalCluster; results match the runs' records."""
    cfg = CompareConfig(
        cubes=(str(demo_cube),),
        out=tmp_path / "r",
        models=("native", "rgb-scratch"),
        seeds=(0,),
        window=32,
        epochs=1,
        max_train_windows=8,
        progress=False,
        scheduler="local",
        budgets=(1.0,),
        baseline=False,
    )
    result = run_compare(cfg, log=lambda _m: None)
    assert sorted(r.model for r in result.runs) == ["native", "rgb-scratch"]
    for r in result.runs:
        assert r.train_windows == 8
        assert (r.run_dir / "history.json").is_file()


# --------------------------------------------------------------------------- fair arms (issue 15)


def _arm_cfg(demo_cube, tmp_path, **kw):
    base = dict(cubes=(str(demo_cube),), out=tmp_path / "r", seeds=(0,), window=32, epochs=1,
                max_train_windows=8, batch_size=4, progress=False)  # fmt: skip
    base.update(kw)
    return CompareConfig(**base)


def test_every_split_is_normalised_with_training_statistics_only(demo_cube, tmp_path):
    import copy

    import numpy as np

    from landcover.datasets import BandStats, cube_stats, inspect_cube
    from landcover.experiment import _datasets

    cfg = _arm_cfg(demo_cube, tmp_path, max_train_windows=None)
    train, val, test = _datasets(cfg, "native", 0)
    assert train.stats == val.stats == test.stats
    assert len(train) <= 512  # window_stats reads them all

    def raw(ds):  # the same windows, physical values
        out = copy.copy(ds)
        n = len(ds.band_names)
        out.set_stats(BandStats(ds.band_names, (0.0,) * n, (1.0,) * n, (0,) * n))
        return out

    items = [raw(train)[i] for i in range(len(train))]  # one read each (augmentation is random)
    vals = np.concatenate([it["image"].double().numpy()[:, it["mask"].numpy()] for it in items], axis=1)
    np.testing.assert_allclose(train.stats.mean, vals.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(train.stats.std, vals.std(axis=1), rtol=1e-4)
    # the whole-cube statistics, which see the validation and test areas, are not used
    whole = cube_stats(inspect_cube(str(demo_cube)))["reflectance"]
    whole_mean = np.array(whole["sum"]) / np.array(whole["count"])
    assert not np.allclose(train.stats.mean, whole_mean, rtol=1e-4)
    # a validation window is (value - train mean) / train std
    v, rv = val[0], raw(val)[0]
    m = v["mask"].numpy()
    got = v["image"].numpy()[:, m]
    mean, std = np.array(train.stats.mean)[:, None], np.array(train.stats.std)[:, None]
    exp = (rv["image"].numpy()[:, m] - mean) / std
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)


def test_training_windows_travel_compact_and_decode_to_the_float_targets(demo_cube, tmp_path):
    """compare's training split hands uint8 steps to the loader (a quarter of the float32 bytes:
    the GPU check measured 182 -> 437 samples/s); fit decodes them to exactly the float targets."""
    import copy

    import torch

    from landcover.datasets import decode_target
    from landcover.experiment import _datasets

    cfg = _arm_cfg(demo_cube, tmp_path, max_train_windows=None)
    assert cfg.augment
    train, val, test = _datasets(cfg, "native", 0)
    assert train.target_dtype == "uint8"
    assert val.target_dtype == test.target_dtype == "float32"  # scored as before
    wide = copy.copy(train)
    wide.target_dtype = "float32"
    idx = list(range(min(len(train), 6)))
    torch.manual_seed(5)  # the same dihedral draws for both reads
    compact = train._batch(idx)
    torch.manual_seed(5)
    plain = wide._batch(idx)
    assert compact["target"].dtype == torch.uint8
    assert compact["target"].nbytes * 4 == plain["target"].nbytes
    assert torch.equal(decode_target(compact["target"]), plain["target"])
    assert torch.equal(compact["image"], plain["image"]) and torch.equal(compact["mask"], plain["mask"])


def test_pretrained_arms_get_their_pretraining_scaling(demo_cube, tmp_path):
    import numpy as np

    from landcover.experiment import _datasets
    from landcover.weights import SSL4EO_TM_RANGES

    cfg = _arm_cfg(demo_cube, tmp_path, max_train_windows=None)
    train, val, _ = _datasets(cfg, "rgb-imagenet", 0)
    st = train.arm_stats
    np.testing.assert_allclose(train.stats.mean, st.low)
    np.testing.assert_allclose(np.array(train.stats.std), np.array(st.high) - np.array(st.low))
    items = [train[i] for i in range(len(train))]
    x = np.concatenate([it["image"].numpy()[:, it["mask"].numpy()] for it in items], 1)
    assert 0.93 < float(((x >= 0) & (x <= 1)).mean()) < 0.97  # a 2-98 % stretch: ~4 % outside [0, 1]
    assert "percentile stretch" in train.arm_norm and "ImageNet" in train.arm_norm
    ssl, _, _ = _datasets(cfg, "ssl4eo", 0)
    assert ssl.band_names[-1] == "thermal"  # SSL4EO-L weights take TM bands 1-7
    for name, mean, std in zip(ssl.band_names, ssl.stats.mean, ssl.stats.std, strict=True):
        lo, hi = SSL4EO_TM_RANGES[name]
        assert mean == pytest.approx(lo) and std == pytest.approx(hi - lo)
    z, _, _ = _datasets(replace_cfg(cfg, pretrained_input_norm="zscore"), "rgb-imagenet", 0)
    np.testing.assert_allclose(z.stats.mean, z.arm_stats.bands.mean)


def replace_cfg(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)


def test_lr_is_chosen_per_arm_on_validation_and_recorded(demo_cube, tmp_path):
    from landcover.experiment import train_model

    cfg = _arm_cfg(demo_cube, tmp_path, lr_grid=(1e-5, 3e-2), lr_search_epochs=1, class_weighting="inverse")
    r = train_model(cfg, "native", 0)
    hp = r.hparams
    assert hp["lr_select"] == "grid" and set(hp["lr_scores"]) == {"1e-05", "0.03"}
    best = max(hp["lr_scores"], key=lambda k: (hp["lr_scores"][k], -float(k)))
    assert hp["lr"] == pytest.approx(float(best))
    # the run trained at the chosen peak LR (one-cycle: no logged LR above it, and near it mid-run)
    peak = max(row["lr"] for row in r.history.samples if row.get("lr") is not None)
    assert 0.5 * hp["lr"] < peak <= hp["lr"] * (1 + 1e-6)
    assert hp["encoder_lr"] == hp["lr"] and hp["encoder_lr_factor"] == 1.0  # trained from scratch
    assert "training-split statistics" in hp["input_norm"]
    assert hp["class_weighting"] == "inverse (cap 10)"
    w = [v for v in hp["class_weights"]]  # recorded to 3 decimals: the cap holds up to that rounding
    assert (max(w) - 5e-4) / (min(w) + 5e-4) <= 10.0 + 1e-6 and max(w) > min(w)


def test_select_lr_fixed_and_unknown():
    from landcover.arms import select_lr

    kw = dict(new_model=None, param_groups=None, train_loader=None, val_loader=None, class_codes=(),
              base=None,
              grid=(1e-3,), search_epochs=1, fixed_lr=2e-3, encoder_lr_factor=0.1)  # fmt: skip
    choice = select_lr("fixed", **kw)
    assert (choice.lr, choice.encoder_lr, choice.scores) == (2e-3, pytest.approx(2e-4), {})
    with pytest.raises(ValueError, match="unknown LR selection"):
        select_lr("best", **kw)


def _ssl4eo_file(path, encoder="resnet18"):
    """A state dict with the shapes of the SSL4EO-L TM TOA weights (7 input bands), random values."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, encoder)()
    net.conv1 = torch.nn.Conv2d(7, 64, kernel_size=7, stride=2, padding=3, bias=False)
    torch.save(net.state_dict(), path)
    return path


def test_ssl4eo_arm_fine_tunes_its_encoder_at_a_lower_lr(demo_cube, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    from landcover.experiment import train_model

    weights = _ssl4eo_file(tmp_path / "ssl4eo.pth")
    cfg = _arm_cfg(
        demo_cube, tmp_path, max_train_windows=4, lr_select="fixed", lr=1e-2, ssl4eo_weights=str(weights)
    )
    r = train_model(cfg, "ssl4eo", 0, preset="base")
    hp = r.hparams
    assert hp["encoder_lr_factor"] == 0.1 and hp["encoder_lr"] == pytest.approx(1e-3)
    rows = [row for row in r.history.samples if row.get("lr_encoder") is not None]
    assert rows and all(row["lr_encoder"] == pytest.approx(0.1 * row["lr_decoder"]) for row in rows)
    assert hp["bands"][-1] == "thermal"
    assert hp["weights"].startswith("unverified weights (sha256 ")  # random bytes: never called SSL4EO
    assert len(hp["weights_sha256"]) == 64
    assert "SSL4EO-L TM TOA scaling" in hp["input_norm"]


def test_ssl4eo_without_weights_is_dropped_with_a_reason(demo_cube, tmp_path, monkeypatch):
    import shutil

    from landcover.experiment import _prepare_arms
    from landcover.store import record_provenance

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    # build_cube records that the demo cube's scenes are synthetic, whose default window is 64 px
    models, notes = ["native"], []
    cfg = _prepare_arms(_arm_cfg(demo_cube, tmp_path, window=None), models, None, notes, lambda _m: None)
    assert cfg.window == 64 and any(n.startswith("Window: 64 px windows (synthetic data)") for n in notes)
    # the same cube marked real: real data's default is 128 px windows
    real = tmp_path / "real.zarr"
    shutil.copytree(demo_cube, real)
    record_provenance(real, synthetic=False)
    models, notes = ["native", "ssl4eo"], []
    cfg = _prepare_arms(_arm_cfg(real, tmp_path, window=None), models, None, notes, lambda _m: None)
    assert models == ["native"]
    assert any("ssl4eo not run" in n and "--download-weights" in n for n in notes)
    # at 128 px this small cube leaves a split empty, so compare trains at the largest window that fills all
    fit = [n for n in notes if n.startswith("Window: ")]
    assert cfg.window == 96 and len(fit) == 1 and "instead of the default 128 px" in fit[0]
    weights = _ssl4eo_file(tmp_path / "w.pth")
    models, notes = ["ssl4eo"], []
    cfg = _prepare_arms(_arm_cfg(real, tmp_path, ssl4eo_weights=str(weights)), models, None, notes, print)
    assert models == ["ssl4eo"] and cfg.ssl4eo_weights == str(weights)
    assert any("unverified weights" in n and "not called ssl4eo" in n for n in notes)
    assert any("32 px, set explicitly on real data" in n and "1x1 px bottleneck" in n for n in notes)


def test_ssl4eo_resnet50_is_selected_by_the_base50_preset(demo_cube, tmp_path, monkeypatch):
    """``--preset base50``: compare looks up, checks and loads the SSL4EO-L ResNet-50 file."""
    import torch

    from landcover.experiment import _prepare_arms
    from landcover.weights import weights_for

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    r50 = weights_for("ssl4eo", "resnet50", "moco")
    state = torch.load(_ssl4eo_file(hub / r50.filename, "resnet50"), weights_only=True)
    # the ResNet-18 presets look for the ResNet-18 file, which is not there
    models, notes = ["native", "ssl4eo"], []
    _prepare_arms(_arm_cfg(demo_cube, tmp_path, preset="base"), models, None, notes, lambda _m: None)
    assert models == ["native"] and any("resnet18_landsat_tm_toa_moco" in n for n in notes)
    out = tmp_path / "o"
    argv = ["-q", "compare", str(demo_cube), "--models", "ssl4eo", "--preset", "base50", "--seeds", "0",
            "--window", "32", "--epochs", "1", "--budget", "2", "--batch-size", "2", "--budgets", "1",
            "--lr-select", "fixed", "--no-baseline", "--n-boot", "100", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "ssl4eo" in metrics["models"]
    assert r50.filename in json.dumps(metrics)  # the weights note names the ResNet-50 file it checked
    ckpt = torch.load(out / "runs" / "ssl4eo" / "seed0" / "last.pt", weights_only=True)
    assert ckpt["spec"]["encoder"] == "resnet50" and ckpt["spec"]["pretrained"].startswith("unverified")
    trained = ckpt["model"]
    for key in ("layer4.2.conv3.weight", "layer3.5.bn3.running_var"):  # Bottleneck blocks, ResNet-50 depth
        assert trained[f"encoder.{key}"].shape == state[key].shape


def test_min_steps_raises_the_epochs_of_every_arm_alike(demo_cube, tmp_path):
    from landcover.arms import run_epochs
    from landcover.experiment import train_model

    # the real Lanjaron pair in 32 px windows, stride 16: 241 training windows, 16 steps of 16 per epoch
    assert run_epochs(15, 241, 16) == 15
    assert run_epochs(15, 241, 16, min_steps=600) == 38
    assert run_epochs(40, 241, 16, min_steps=600) == 40  # never lowered
    with pytest.raises(ValueError, match="min_steps"):
        run_epochs(15, 241, 16, min_steps=-1)
    cfg = _arm_cfg(demo_cube, tmp_path, lr_select="fixed", min_steps=6, budgets=(1.0,), baseline=False)
    r = train_model(cfg, "native", 0, preset="tiny")  # 8 windows, batch 4: 2 steps per epoch
    assert r.hparams["epochs"] == 3 and [row["step"] for row in r.history.epochs] == [2, 4, 6]


def test_default_window_is_small_only_on_synthetic_cubes(tmp_path):
    from landcover.arms import REAL_WINDOW, SYNTHETIC_WINDOW, cube_source, default_window
    from landcover.testing.cubes import make_cube

    synth = make_cube(tmp_path / "s.zarr", shape=(64, 64), times=1, chunks=32, seed=0)
    assert cube_source(synth) == "synthetic"
    window, why = default_window([synth])
    assert window == SYNTHETIC_WINDOW < REAL_WINDOW and "1x1 bottleneck" in why


def test_download_weights_refuses_a_file_that_does_not_match(demo_cube, tmp_path, monkeypatch, capsys):
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from landcover.weights import weights_for

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    www = tmp_path / "www"
    www.mkdir()
    _ssl4eo_file(www / weights_for("ssl4eo", "resnet18", "moco").filename)  # right name, wrong bytes

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(www), **k)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code = main(["compare", str(demo_cube), "--models", "ssl4eo", "--download-weights", "--weights-url",
                     url, "--out", str(tmp_path / "o")])  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    err = capsys.readouterr().err
    assert "not the published prefix 1c691b4f" in err and len(err.strip().splitlines()) == 1
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_smaller_windows_and_fit_window_pick_the_largest_that_fills_every_split():
    from landcover.arms import fit_window, smaller_windows

    assert smaller_windows(128) == [96, 64, 32, 16] and smaller_windows(100) == [96, 64, 32, 16]
    assert smaller_windows(32) == [16] and smaller_windows(16) == []
    seen: list[int] = []

    def counts(w: int) -> dict[str, int]:  # a cube 300 px wide: blocks of 4 windows + a 1-window buffer
        seen.append(w)
        n = max(0, 300 // w - 5)
        return {"train": n, "val": 1 if w <= 96 else 0, "test": 1}

    layout = lambda w: f"stride {w}"  # noqa: E731
    assert fit_window(32, counts, explicit=True, cubes=["c.zarr"], layout=layout) == (32, None)
    seen.clear()
    window, note = fit_window(128, counts, explicit=False, cubes=["c.zarr"], layout=layout)
    assert (window, seen) == (32, [128, 96, 64, 32])  # 96: val empty; 64: train 0; 32: 4/1/1
    assert note is not None and "instead of the default 128 px" in note
    assert "0/0/1" in note and "4/1/1" in note
    one_line = r"^c\.zarr: 128 px windows \(stride 128\) give train/val/test 0/0/1 windows; .* --window 32$"
    with pytest.raises(ConfigError, match=one_line):
        fit_window(128, counts, explicit=True, cubes=["c.zarr"], layout=layout)
    empty = {"train": 0, "val": 1, "test": 1}
    with pytest.raises(ConfigError, match="2 cubes .*no window down to 16 px"):
        fit_window(64, lambda w: empty, explicit=False, cubes=["a", "b"], layout=layout)


@pytest.fixture(scope="module")
def lanjaron_cube(shared_data, tmp_path_factory):
    """The real Lanjarón pair (394 x 621 px) as a cube, built as the README does."""
    d = shared_data / "pairs" / "lanjaron"
    out = tmp_path_factory.mktemp("lanjaron") / "lanjaron.zarr"
    argv = ["-q", "cube", "build", "--stack", str(d / "landsat8_lanjaron_sat_30m.tif"), "--scale", "2.75e-5",
            "--offset", "-0.2", "--sensor", "OLI", "--corine", str(d / "clc2018_lanjaron.gpkg"),
            "--out", str(out), "--scheduler", "none"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.mark.real
def test_default_window_on_the_small_real_pair_is_one_every_split_can_use(lanjaron_cube, tmp_path):
    """128 px windows in 4-window blocks with a one-window buffer leave the real pair no training window.

    compare counts the windows of every split first and, at the default window, trains at the largest
    window that fills every split; the report says which and why.
    """
    from dataclasses import replace

    from landcover.arms import REAL_WINDOW
    from landcover.experiment import split_windows

    cfg = CompareConfig(
        cubes=(str(lanjaron_cube),), out=tmp_path / "r", models=("native",), seeds=(0,), epochs=1,
        max_train_windows=2, batch_size=2, lr_select="fixed", budgets=(1.0,), baseline=False, progress=False,
    )  # fmt: skip
    default = split_windows(replace(cfg, window=REAL_WINDOW))
    assert min(default.values()) == 0  # the issue: the default window cannot train here
    result = run_compare(cfg, log=lambda _m: None)
    window = result.config.window
    assert window is not None and window < REAL_WINDOW
    assert min(result.split_sizes.values()) > 0 and len(result.runs) == 1
    bigger = [w for w in range(window + 32, REAL_WINDOW, 32)]
    assert all(min(split_windows(replace(cfg, window=w)).values()) == 0 for w in bigger)
    counted = split_windows(replace(cfg, window=window))
    assert result.split_sizes == {**counted, "train": min(2, counted["train"])}  # max_train_windows=2
    text = "\n".join(result.notes)  # the report's notes (write_report lists them)
    counts = "/".join(str(default[s]) for s in ("train", "val", "test"))
    assert f"{window} px windows, chosen instead of the default {REAL_WINDOW} px" in text
    assert f"train/val/test {counts} windows" in text and str(lanjaron_cube) in text


@pytest.mark.real
def test_an_explicit_window_too_big_for_the_real_pair_is_one_line_naming_one_that_fits(
    lanjaron_cube, tmp_path, capsys
):
    from dataclasses import replace

    argv = ["compare", str(lanjaron_cube), "--out", str(tmp_path / "r"), "--models", "native", "--seeds", "0",
            "--epochs", "1", "--budgets", "1", "--no-baseline", "--window", "128"]  # fmt: skip
    from landcover.experiment import split_windows

    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"landcover: {lanjaron_cube}: 128 px windows")
    cfg = CompareConfig(cubes=(str(lanjaron_cube),), models=("native",))
    counts = {w: split_windows(replace(cfg, window=w)) for w in (128, 96, 64, 32)}
    fits = next(w for w in (96, 64, 32) if min(counts[w].values()) > 0)
    at = "/".join(str(counts[128][s]) for s in ("train", "val", "test"))
    assert f"give train/val/test {at} windows" in err and err.endswith(f"use --window {fits}")
    assert not (tmp_path / "r" / "report.md").exists()
