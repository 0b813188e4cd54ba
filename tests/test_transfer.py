"""Transfer: model surgery, strategies, budgets, label hook, and the experiment end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from landcover.datasets import WindowDataset
from landcover.errors import ConfigError
from landcover.models import build_model, save_model
from landcover.testing.cubes import make_cube
from landcover.transfer import (
    LabelVariableDataset,
    TransferConfig,
    TransferTrainConfig,
    budget_indices,
    param_groups,
    run_transfer,
    train_transfer,
    transfer_model,
    write_report,
)

BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
CODES = (111, 112, 211, 231, 311, 312, 411, 512)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models run fastest (and without oversubscription on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("transfer") / "c.zarr"
    return make_cube(path, shape=(192, 192), classes=CODES, classes_present=8, chunks=64, seed=4)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("native", 6, len(CODES), preset="tiny", bands=BANDS, class_codes=CODES, seed=11)
    return save_model(tmp_path_factory.mktemp("ckpt") / "best.pt", model)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_transfer_model_keeps_backbone_and_replaces_head(phase1: Path) -> None:
    from landcover.models import model_from_checkpoint

    src = model_from_checkpoint(phase1)
    new = transfer_model(phase1, (1, 2, 3, 4, 5), seed=0)
    assert new.spec.class_codes == (1, 2, 3, 4, 5) and new.spec.num_classes == 5
    s, n = src.state_dict(), new.state_dict()
    for k in s:
        if k.startswith("head."):
            assert n[k].shape != s[k].shape or not torch.equal(n[k], s[k])
        else:
            assert torch.equal(n[k], s[k]), k
    # seeded head: same seed, same head
    again = transfer_model(phase1, (1, 2, 3, 4, 5), seed=0)
    assert torch.equal(again.head.weight, new.head.weight)


def test_param_groups_follow_the_strategy(phase1: Path) -> None:
    model = transfer_model(phase1, (1, 2, 3, 4, 5))
    enc = sum(p.numel() for p in model.encoder.parameters())
    groups, frozen = param_groups(model, "frozen", lr=1e-3)
    assert [g["name"] for g in groups] == ["decoder"] and frozen
    assert not any(p.requires_grad for p in model.encoder.parameters())
    groups, frozen = param_groups(model, "partial", lr=1e-3, partial_stages=1)
    assert [g["name"] for g in groups] == ["encoder", "decoder"]
    assert groups[0]["lr"] == pytest.approx(1e-4)
    assert 0 < sum(p.numel() for p in groups[0]["params"]) < enc
    assert all(p.requires_grad for p in model.encoder.layer3.parameters())
    assert not any(p.requires_grad for p in model.encoder.layer1.parameters())
    groups, frozen = param_groups(model, "full", lr=2e-3, encoder_lr_factor=0.25)
    assert frozen == [] and sum(p.numel() for p in groups[0]["params"]) == enc
    assert groups[0]["lr"] == pytest.approx(5e-4) and groups[1]["lr"] == pytest.approx(2e-3)
    with pytest.raises(ConfigError):
        param_groups(model, "bogus", lr=1e-3)  # type: ignore[arg-type]


def test_frozen_strategy_leaves_encoder_unchanged_while_head_learns(cube: Path, phase1: Path) -> None:
    ds = WindowDataset(cube, size=64, stride=64, bands=list(BANDS), level=1, min_valid=0.1)
    codes = tuple(int(c) for c in ds.class_codes)
    assert codes == (1, 2, 3, 4, 5)
    model = transfer_model(phase1, codes)
    enc_before = _state(model.encoder)
    head_before = _state(model.head)
    dec_before = _state(model.decoder)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = torch.utils.data.DataLoader(ds, batch_size=8)
    cfg = TransferTrainConfig(epochs=1, min_steps=4, strategy="frozen", lr=1e-2, device="cpu", seed=0)
    messages: list[str] = []
    hist = train_transfer(model, loader, val, cfg, class_codes=codes, log=messages.append)
    assert hist.meta["strategy"] == "frozen" and hist.epochs
    n_batches = len(loader)
    epochs = max(1, -(-4 // n_batches))  # whole epochs, at least min_steps steps
    assert len(hist.epochs) == epochs and hist.meta["total_steps"] == epochs * n_batches >= 4
    assert len(messages) == len(hist.epochs) and "val miou_l3" in messages[0]
    # learning curve: a validation before training, then one per epoch (val_every_samples=None)
    assert [r["samples_seen"] for r in hist.samples] == [0] + [r["samples_seen"] for r in hist.epochs]
    assert all("val_miou_l3" in r for r in hist.samples)
    assert not model.training
    for k, v in _state(model.encoder).items():  # weights AND BatchNorm running statistics
        assert torch.equal(v, enc_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in _state(model.head).items())
    assert any(not torch.equal(v, dec_before[k]) for k, v in _state(model.decoder).items())

    model2 = transfer_model(phase1, codes)
    cfg2 = TransferTrainConfig(epochs=1, min_steps=4, strategy="full", lr=1e-2, device="cpu", seed=0)
    hist2 = train_transfer(model2, loader, None, cfg2, class_codes=codes)
    assert any(not torch.equal(v, enc_before[k]) for k, v in _state(model2.encoder).items())
    assert hist2.meta["groups"] == pytest.approx({"encoder": 1e-3, "decoder": 1e-2})
    for r in hist2.epochs:  # one schedule, the encoder at a tenth of the decoder's LR
        assert r["lr_encoder"] == pytest.approx(0.1 * r["lr_decoder"], rel=1e-9)


def test_partial_strategy_trains_the_last_stage_and_resumes_from_checkpoints(
    cube: Path, phase1: Path, tmp_path: Path
) -> None:
    ds = WindowDataset(cube, size=64, stride=64, bands=list(BANDS), level=1, min_valid=0.1)
    codes = tuple(int(c) for c in ds.class_codes)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    model = transfer_model(phase1, codes)
    before = _state(model.encoder)
    cfg = TransferTrainConfig(
        epochs=2, min_steps=0, strategy="partial", partial_stages=1, encoder_lr_factor=0.2, lr=1e-2,
        device="cpu", checkpoint_dir=tmp_path / "run",
    )  # fmt: skip
    hist = train_transfer(model, loader, None, cfg, class_codes=codes)
    after = _state(model.encoder)
    last = f"layer{len([k for k in dict(model.encoder.named_children()) if k.startswith('layer')])}."
    for k, v in after.items():  # stem and early stages: weights and BN statistics untouched
        if not k.startswith(last):
            assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in after.items() if k.startswith(last))
    assert all(r["lr_encoder"] == pytest.approx(0.2 * r["lr_decoder"], rel=1e-9) for r in hist.epochs)
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "history.json").is_file()
    # resuming the finished run trains nothing more and gives the same history
    again = transfer_model(phase1, codes)
    resumed = train_transfer(again, loader, None, dataclasses.replace(cfg, resume=True), class_codes=codes)
    assert [r["train_loss"] for r in resumed.epochs] == [r["train_loss"] for r in hist.epochs]
    for k, v in _state(again).items():
        assert torch.equal(v, _state(model)[k]), k
    # but not with another strategy (other parameter groups)
    other = dataclasses.replace(cfg, resume=True, strategy="full")
    with pytest.raises(ConfigError, match="cannot resume"):
        train_transfer(transfer_model(phase1, codes), loader, None, other, class_codes=codes)


def test_budgets_are_nested_deterministic_and_seeded() -> None:
    n = 537
    a1, a10, a100 = (budget_indices(n, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert len(a1) == 6 and len(a10) == 54 and len(a100) == n
    assert set(a1) <= set(a10) <= set(a100) == set(range(n))
    np.testing.assert_array_equal(a10, budget_indices(n, 0.1, seed=3))
    assert not np.array_equal(a10, budget_indices(n, 0.1, seed=4))
    assert len(budget_indices(5, 0.01, seed=0)) == 1
    with pytest.raises(ValueError):
        budget_indices(10, 0.0, seed=0)


def test_label_variable_hook_reads_user_classes(tmp_path: Path) -> None:
    from landcover.store import add_variables

    store = make_cube(tmp_path / "u.zarr", shape=(96, 96), classes=CODES, chunks=32, seed=2)
    yy, xx = np.mgrid[0:96, 0:96]
    water = np.where(xx < 48, 1, 2).astype("uint8")  # a user raster on the cube grid
    water[:8, :8] = 0  # nodata
    grid = xr.open_zarr(store)
    add_variables(store, xr.Dataset({"water": (("y", "x"), water)}, coords={"y": grid.y, "x": grid.x}))
    base = WindowDataset(store, size=32, stride=32, bands=list(BANDS), min_valid=0.0)
    ds = LabelVariableDataset(base, "water", class_codes=(1, 2))
    assert len(ds) == len(base) == 9
    for i in range(len(ds)):
        item = ds[i]
        _, _, r, c = (int(v) for v in item["position"])
        expect = water[r : r + 32, c : c + 32]
        t = item["target"].numpy()
        m = item["mask"].numpy()
        assert t.shape == (2, 32, 32)
        np.testing.assert_array_equal(t[0][m], (expect == 1)[m])
        np.testing.assert_array_equal(t[1][m], (expect == 2)[m])
        assert not m[expect == 0].any()
    with pytest.raises(Exception, match="no variable"):
        LabelVariableDataset(base, "nope", class_codes=(1,))


# -- the experiment: arms, a new problem, no leakage, the report ----------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("transfer") / "big.zarr"
    return make_cube(path, shape=(256, 256), classes=CODES, classes_present=8, chunks=64, seed=5)


def _phase1_split(cube: Path) -> dict[str, Any]:
    """The split record of a phase-1 run on ``cube`` (16 px windows, 64 px blocks, 16 px buffer, seed 7)."""
    from landcover.windows import SplitSpec

    ds = WindowDataset(
        cube, size=16, bands=list(BANDS), split="train", split_spec=SplitSpec(block=64, buffer=16, seed=7)
    )
    return ds.split_record


@pytest.fixture(scope="module")
def phase1_split(big: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("native", 6, len(CODES), preset="tiny", bands=BANDS, class_codes=CODES, seed=11)
    return save_model(tmp_path_factory.mktemp("ckpt") / "best.pt", model, split=_phase1_split(big))


def _cfg(cube: Path, ckpt: Path, out: Path, **kw: Any) -> TransferConfig:
    base: dict[str, Any] = dict(
        cubes=(str(cube),), checkpoint=str(ckpt), out=str(out), level=1, window=16, min_valid=0.1,
        epochs=1, min_steps=2, batch_size=16, device="cpu", num_threads=1, bootstrap=200,
        seeds=(0, 1), budgets=(0.5, 1.0), lr_grid=(3e-3,),
    )  # fmt: skip
    base.update(kw)
    return TransferConfig(**base)


def test_linear_probe_trains_only_the_new_head(cube: Path, phase1: Path) -> None:
    model = transfer_model(phase1, (1, 2, 3, 4, 5))
    groups, frozen = param_groups(model, "linear", lr=1e-2)
    assert [g["name"] for g in groups] == ["decoder"]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.head.parameters()}
    ds = WindowDataset(cube, size=64, stride=64, bands=list(BANDS), level=1, min_valid=0.1)
    before = _state(model)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    cfg = TransferTrainConfig(epochs=1, min_steps=2, strategy="linear", lr=1e-2, device="cpu")
    hist = train_transfer(model, loader, None, cfg, class_codes=(1, 2, 3, 4, 5))
    assert hist.meta["trainable_parameters"] == sum(p.numel() for p in model.head.parameters())
    for k, v in _state(model).items():  # encoder and decoder: weights and BatchNorm statistics untouched
        assert torch.equal(v, before[k]) != k.startswith("head."), k


def test_zero_shot_sums_the_phase1_probabilities(phase1: Path) -> None:
    from landcover.models import model_from_checkpoint
    from landcover.transfer import zero_shot_groups, zero_shot_model

    src = model_from_checkpoint(phase1)
    groups = zero_shot_groups(CODES, (1, 2, 3, 4, 5))
    assert groups == [[0, 1], [2, 3], [4, 5], [6], [7]]
    assert zero_shot_groups(CODES, (11, 21, 23, 31, 41, 51)) == [[0, 1], [2], [3], [4, 5], [6], [7]]
    assert zero_shot_groups(CODES, (7, 1000)) is None  # a user problem: the classes do not map
    x = torch.randn(2, 6, 32, 32)
    p_old = torch.softmax(src(x), dim=1)
    p_new = torch.softmax(zero_shot_model(src, groups)(x), dim=1)
    for i, g in enumerate(groups):
        torch.testing.assert_close(p_new[:, i], p_old[:, g].sum(dim=1))


def _class_raster(path: Path, *, x0: float, y0: float, values: np.ndarray) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path, "w", driver="GTiff", height=values.shape[0], width=values.shape[1], count=1, dtype="int16",
        crs="EPSG:32632", transform=from_origin(x0, y0, 60.0, 60.0), nodata=-1,
    ) as dst:  # fmt: skip
        dst.write(values.astype("int16"), 1)
    return path


def test_user_label_raster_becomes_exact_fractions_in_the_cube(tmp_path: Path) -> None:
    from landcover.corine import read_class_raster
    from landcover.errors import InputFileError
    from landcover.transfer import add_labels

    store = make_cube(tmp_path / "u.zarr", shape=(96, 96), classes=CODES, chunks=32, seed=2)
    # 60 m cells; the 7|1000 edge runs through the middle of cube column 48 (cube origin 399985 E)
    values = np.where(np.arange(60)[None, :] < 26, 7, 1000).repeat(60, axis=0)
    values[:6, :] = -1  # nodata over the first ~10 cube rows
    raster = _class_raster(tmp_path / "crops.tif", x0=399_880.0, y0=5_500_015.0 + 60.0, values=values)
    with pytest.raises(InputFileError, match="1000"):
        read_class_raster(raster, classes=(7,))
    codes = add_labels(store, raster)
    assert codes == (7, 1000)
    assert add_labels(store, raster) == codes  # the same source again: left as it is
    base = WindowDataset(store, size=32, stride=32, bands=list(BANDS), min_valid=0.0)
    ds = LabelVariableDataset(base, "user_labels")
    assert ds.class_codes == (7, 1000)
    frac = np.zeros((2, 96, 96), dtype="float32")
    mask = np.zeros((96, 96), dtype=bool)
    for i in range(len(ds)):
        item = ds[i]
        _, _, r, c = (int(v) for v in item["position"])
        frac[:, r : r + 32, c : c + 32] = item["target"].numpy()
        mask[r : r + 32, c : c + 32] = item["mask"].numpy()
    assert not mask[:8].any() and mask[12:].all()  # rows under nodata (coverage < 50 %) are masked
    np.testing.assert_allclose(frac[0, 12:, :48], 1.0)
    np.testing.assert_allclose(frac[:, 12:, 48], 0.5, atol=1 / 250)  # the edge halves pixel column 48
    np.testing.assert_allclose(frac[1, 12:, 49:], 1.0)
    other = _class_raster(tmp_path / "other.tif", x0=399_880.0, y0=5_500_075.0, values=values)
    with pytest.raises(InputFileError, match="another source"):
        add_labels(store, other)


def test_user_label_polygons_become_exact_fractions_in_the_cube(tmp_path: Path) -> None:
    import shapely
    from pyogrio.raw import write

    from landcover.errors import ConfigError
    from landcover.transfer import add_labels

    store = make_cube(tmp_path / "v.zarr", shape=(96, 96), classes=CODES, chunks=32, seed=2)
    x0, y0 = 399_985.0, 5_500_015.0  # cube corner; the 3|9 edge halves pixel column 48, 30 m pixels
    edge, right, bottom = x0 + 48.5 * 30, x0 + 96 * 30, y0 - 96 * 30
    polys = [
        shapely.box(x0 - 100, bottom - 100, edge, y0 - 300),
        shapely.box(edge, bottom - 100, right + 100, y0 - 300),
    ]
    gpkg = tmp_path / "crops.gpkg"
    write(
        str(gpkg), shapely.to_wkb(polys), [np.array([3, 9], dtype="int32")], ["crop"], layer="fields",
        driver="GPKG", geometry_type="Polygon", crs="EPSG:32632",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="--field"):
        add_labels(store, gpkg)
    assert add_labels(store, gpkg, field="crop", variable="crops") == (3, 9)
    ds = LabelVariableDataset(
        WindowDataset(store, size=32, stride=32, bands=list(BANDS), min_valid=0.0), "crops"
    )
    frac = np.zeros((2, 96, 96), dtype="float32")
    mask = np.zeros((96, 96), dtype=bool)
    for i in range(len(ds)):
        item = ds[i]
        _, _, r, c = (int(v) for v in item["position"])
        frac[:, r : r + 32, c : c + 32] = item["target"].numpy()
        mask[r : r + 32, c : c + 32] = item["mask"].numpy()
    assert not mask[:10].any() and mask[10:].all()  # the first 10 rows (300 m) have no polygon
    np.testing.assert_allclose(frac[0, 10:, :48], 1.0)
    np.testing.assert_allclose(frac[:, 10:, 48], 0.5, atol=1 / 250)
    np.testing.assert_allclose(frac[1, 10:, 49:], 1.0)


def _in_training_reach(record: dict[str, Any], cube: Path, windows: np.ndarray, size: int) -> int:
    """Windows with a pixel within ``buffer`` of a pixel phase-1 training windows could use.

    Pixel masks, independent of the splits code: trainable pixels lie in a training block of the
    phase-1 cube and more than ``buffer`` px from every val/test block (the training buffer).
    """
    from scipy.ndimage import maximum_filter

    from landcover.datasets import inspect_cube
    from landcover.windows import global_origin

    info = inspect_cube(cube)
    o = global_origin(info.transform)
    block, buf = int(record["block"]), int(record["buffer"])
    split = {(r, c): s for r, c, s in record["assignments"][0]}
    h, w = info.shape
    pad = 2 * buf
    gr = (np.arange(-pad, h + pad) + o[0]) // block
    gc = (np.arange(-pad, w + pad) + o[1]) // block
    codes = np.array([[split.get((r, c), -1) for c in gc] for r in gr])
    inside = np.zeros(codes.shape, dtype=bool)
    inside[pad : pad + h, pad : pad + w] = True

    def grow(mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = maximum_filter(mask.astype("uint8"), size=2 * buf + 1) > 0
        return out

    trainable = (codes == 0) & inside & ~grow(codes > 0)
    near = grow(trainable)
    return sum(bool(near[pad + r : pad + r + size, pad + c : pad + c + size].any()) for _, _, r, c in windows)


def test_phase2_respects_the_phase1_split_or_refuses(
    big: Path, phase1_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from landcover.cli import main
    from landcover.models import load_checkpoint
    from landcover.transfer import LeakageError

    record = load_checkpoint(phase1_split)["split"]
    # phase-2 split settings of its own on the same pixels: its val/test windows meet phase-1 training blocks
    with pytest.raises(LeakageError, match=r"refusing to run: \d+ of \d+ phase-2 val/test windows") as err:
        run_transfer(
            _cfg(big, phase1_split, tmp_path / "r0", arms=("zero-shot",), split_block=64, split_seed=1)
        )
    assert "\n" not in str(err.value) and "--allow-overlap" in str(err.value)
    assert not (tmp_path / "r0").exists()
    own = {"arms": ("zero-shot",), "split_block": 64, "split_seed": 1}
    allowed = run_transfer(_cfg(big, phase1_split, tmp_path / "r1", allow_overlap=True, **own))
    assert allowed.leakage["overlapping"] > 0
    evals = np.concatenate([allowed.windows["val"], allowed.windows["test"]])
    assert _in_training_reach(record, big, evals, 16) > 0
    assert any("--allow-overlap" in n for n in allowed.notes)
    # by default phase 2 keeps the phase-1 assignment: no val/test pixel within the buffer of trainable pixels
    result = run_transfer(_cfg(big, phase1_split, tmp_path / "r2", arms=("zero-shot",)))
    assert result.split["mode"] == "inherit" and result.shift["place"] == "same footprint"
    evals = np.concatenate([result.windows["val"], result.windows["test"]])
    assert len(result.windows["val"]) and len(result.windows["test"])
    assert _in_training_reach(record, big, evals, 16) == 0 and result.leakage["overlapping"] == 0
    # the command line: one line naming the problem, exit status 1
    args = [
        "-q",
        "transfer",
        str(phase1_split),
        "--cube",
        str(big),
        "--out",
        str(tmp_path / "r3"),
        "--window",
        "16",
    ]
    own_args = ["--arms", "zero-shot", "--split-block", "64", "--split-seed", "1", "--device", "cpu"]
    assert main([*args, *own_args]) == 1
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and "refusing to run" in err_text


def test_phase2_on_a_new_region_uses_its_own_split(phase1_split: Path, tmp_path: Path) -> None:
    far = make_cube(
        tmp_path / "far.zarr",
        shape=(160, 160),
        classes=CODES,
        chunks=64,
        seed=9,
        origin=(600_005.0, 5_200_015.0),
    )
    result = run_transfer(
        _cfg(far, phase1_split, tmp_path / "r", arms=("zero-shot",), budgets=(1.0,), seeds=(0,))
    )
    assert result.shift["place"] == "new region" and result.split["mode"] == "own"
    assert result.leakage["overlapping"] == 0 and result.split_sizes["test"] > 0


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision ResNet-18 state dict of the right shapes (random weights; never downloaded)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ssl4eo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SSL4EO-L TM TOA ResNet-18 state dict of the right shapes (7 input bands; random weights)."""
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = torch.nn.Conv2d(7, 64, kernel_size=7, stride=2, padding=3, bias=False)
    path = tmp_path_factory.mktemp("weights") / "resnet18_landsat_tm_toa_moco-1c691b4f.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_experiment_end_to_end_writes_the_report(big: Path, phase1_split: Path, tmp_path: Path) -> None:
    arms = ("zero-shot", "linear-probe", "phase1-partial", "phase1-full", "imagenet-rgb", "ssl4eo", "scratch")
    cfg = _cfg(big, phase1_split, tmp_path / "report", arms=arms, batch_size=64)
    messages: list[str] = []
    result = run_transfer(cfg, log=messages.append)
    assert set(result.skipped) == {"imagenet-rgb", "ssl4eo"}  # no weights here: skipped, and said why
    assert (
        "nothing is downloaded" in result.skipped["imagenet-rgb"] and "SSL4EO-L" in result.skipped["ssl4eo"]
    )
    ran = {r.arm for r in result.runs}
    assert ran == set(cfg.arms) - set(result.skipped)
    assert {(r.arm, r.budget, r.seed) for r in result.runs} == {
        (a, b, s) for a in ran for b in (0.5, 1.0) for s in (0, 1)
    }
    by = {(r.arm, r.budget, r.seed): r for r in result.runs}
    assert (
        by[("linear-probe", 1.0, 0)].trainable_parameters
        < by[("phase1-partial", 1.0, 0)].trainable_parameters
    )
    assert (
        by[("phase1-partial", 1.0, 0)].trainable_parameters < by[("phase1-full", 1.0, 0)].trainable_parameters
    )
    assert all(r.steps >= 2 and r.samples > 0 for r in result.runs if r.arm != "zero-shot")
    small = [r.train_windows for r in result.runs if r.budget == 0.5 and r.arm == "scratch"]
    assert max(small) < result.split_sizes["train"]
    zs = [r.test["miou_l3"] for r in result.runs if r.arm == "zero-shot"]
    assert len(set(zs)) == 1  # no training: the bar is the same for every budget and seed
    report = write_report(result)
    out = report.parent
    for name in ("report.md", "metrics.json", "budget_curve.png", "learning_curves_50pct.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_codes"] == [1, 2, 3, 4, 5]
    entry = metrics["models"]["phase1-full@1"]
    assert entry["strategy"] == "full" and entry["seeds"] == [0, 1] and entry["lr"] == 3e-3
    iv = entry["interval"]
    assert iv["low"] <= iv["estimate"] <= iv["high"]
    assert set(entry["per_class_iou"]) == {"1", "2", "3", "4", "5"}
    pairs = {(c["arm"], c["reference"], c["budget"]) for c in metrics["comparisons"]}
    assert ("phase1-full", "scratch", 1.0) in pairs and ("phase1-full", "zero-shot", 1.0) in pairs
    assert ("linear-probe", "scratch", 0.5) in pairs and ("phase1-partial", "linear-probe", 0.5) in pairs
    for c in metrics["comparisons"]:
        assert c["ci_low"] <= c["diff"] <= c["ci_high"] and 0 < c["p_value"] <= 1
        assert (c["verdict"] == "no significant difference") == (c["ci_low"] <= 0 <= c["ci_high"])
    assert metrics["compute"]["scratch"]["steps"] == sum(r.steps for r in result.runs if r.arm == "scratch")
    text = report.read_text()
    assert "**Data: SYNTHETIC**" in text and "no: no local ImageNet weights" in text
    assert "The zero-shot row is the bar" in text and "| 1 Artificial surfaces |" in text
    assert "z-score, training-split statistics" in text


@pytest.mark.slow
def test_pretrained_arms_are_built_at_the_width_of_their_weights(
    big: Path, phase1_split: Path, imagenet_file: Path, ssl4eo_file: Path, tmp_path: Path
) -> None:
    arms = ("imagenet-rgb", "imagenet-native", "ssl4eo", "scratch")
    cfg = _cfg(
        big, phase1_split, tmp_path / "r", arms=arms, budgets=(1.0,), seeds=(0,), batch_size=64, min_steps=1,
        imagenet_weights=str(imagenet_file), ssl4eo_weights=str(ssl4eo_file),
    )  # fmt: skip
    result = run_transfer(cfg, log=lambda m: None)
    assert result.skipped == {}
    by = {r.arm: r for r in result.runs}
    for arm in ("imagenet-rgb", "imagenet-native", "ssl4eo"):  # a full ResNet-18, whatever the phase-1 width
        assert by[arm].parameters > 11_000_000 > 20 * by["scratch"].parameters
    assert by["imagenet-rgb"].parameters < by["imagenet-native"].parameters  # 3 vs 6 input bands
    text = write_report(result).read_text()
    assert text.count("unverified weights") == 2  # random weights are not called ImageNet or SSL4EO-L
    assert "percentile stretch" in text and "SSL4EO-L TM TOA scaling" in text
    assert "top-of-atmosphere" in text  # ssl4eo on a surface-reflectance cube is flagged


def test_learning_rate_is_chosen_on_validation_per_arm(big: Path, phase1_split: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        big, phase1_split, tmp_path / "r", arms=("scratch",), budgets=(1.0,), seeds=(0,), lr_grid=(1e-5, 3e-3)
    )
    messages: list[str] = []
    result = run_transfer(cfg, log=messages.append)
    scores = result.lr_scores["scratch"]
    assert set(scores) == {"1e-05", "0.003"} and sum("on validation" in m for m in messages) == 2
    best = max(scores, key=lambda k: scores[k] if scores[k] is not None else -1)
    assert result.chosen_lr["scratch"] == float(best)
    (run,) = result.runs  # the selection run at the largest budget is the run itself
    assert run.lr == float(best)


def test_transfer_cli_with_user_labels_and_pipeline(
    big: Path, phase1_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil
    import sys

    from landcover.cli import main

    cube = tmp_path / "c.zarr"
    shutil.copytree(big, cube)
    values = np.where(np.arange(140)[:, None] < 70, 3, 9).repeat(140, axis=1)
    raster = _class_raster(tmp_path / "forest.tif", x0=399_925.0, y0=5_500_075.0, values=values)
    common = ["--window", "16", "--epochs", "1", "--min-steps", "1", "--batch-size", "16", "--device", "cpu"]
    common += ["--min-valid", "0.1", "--bootstrap", "100", "--lr-grid", "0.003"]
    args = ["-q", "transfer", str(phase1_split), "--cube", str(cube), "--out", str(tmp_path / "r")]
    arms = ["--arms", "zero-shot,linear-probe,scratch", "--budgets", "1", "--seeds", "0"]
    assert main([*args, "--labels", str(raster), *arms, *common]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["class_codes"] == [3, 9] and set(metrics["table"]) == {"linear-probe", "scratch"}
    assert "not CLC classes" in metrics["skipped"]["zero-shot"]
    assert "forest.tif" in metrics["task"]
    assert "Convergence:" in (tmp_path / "r" / "report.md").read_text()  # steps enough? the report says
    assert main([*args, "--arms", "phase1-full,bogus", *common]) == 1
    assert "arms must be" in capsys.readouterr().err

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
    try:
        import transfer as transfer_pipeline
    finally:
        sys.path.pop(0)
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        f'[transfer]\ncubes = ["{big}"]\ncheckpoint = "{phase1_split}"\nout = "p"\narms = ["scratch"]\n'
        'budgets = [0.5]\nseeds = [1]\nwindow = 16\nepochs = 1\nmin_steps = 1\ndevice = "cpu"\n'
        "min_valid = 0.1\nlr_grid = [0.003]\nbootstrap = 100\n"
    )
    assert transfer_pipeline.main([str(cfg)]) == 0
    assert (tmp_path / "p" / "report.md").is_file()
    assert transfer_pipeline.main([str(cfg), "--checkpoint", str(tmp_path / "none.pt")]) == 1
