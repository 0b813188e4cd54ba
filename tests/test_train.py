from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from landcover.errors import ConfigError
from landcover.models import build_model, load_checkpoint, model_from_checkpoint
from landcover.plotting import plot_lr_find
from landcover.train import History, TrainConfig, evaluate, fit, lr_find

CODES = (211, 311, 512)
TIME_KEYS = {"time", "epoch_time", "samples_per_s", "data_wait_share"}


class Patches(Dataset[dict[str, Any]]):
    """Synthetic windows whose classes differ only in NIR (band 4) and SWIR (band 5).

    Class regions are 8x8 blocks, fractions are a 2x2 box blur of the one-hot map, the
    two top rows are invalid (NaN targets), and bands are standardised-ish noise plus
    a class signature.
    """

    def __init__(self, n: int, *, size: int = 32, seed: int = 0, sleep: float = 0.0) -> None:
        g = np.random.default_rng(seed)
        k = len(CODES)
        low = g.normal(size=(n, k, size // 8, size // 8))
        cls = np.repeat(np.repeat(low, 8, axis=2), 8, axis=3).argmax(1)
        onehot = np.eye(k, dtype=np.float32)[cls].transpose(0, 3, 1, 2)
        frac = (onehot + np.roll(onehot, 1, 2) + np.roll(onehot, 1, 3) + np.roll(onehot, (1, 1), (2, 3))) / 4
        sig = np.zeros((k, 6), dtype=np.float32)
        sig[:, 3] = (1.0, -1.0, -1.0)
        sig[:, 4] = (-1.0, 1.0, -1.0)
        img = g.normal(scale=0.5, size=(n, 6, size, size)).astype(np.float32)
        img += np.einsum("nkhw,kc->nchw", frac, sig)
        mask = np.ones((n, size, size), dtype=bool)
        mask[:, :2] = False
        frac = np.where(mask[:, None], frac, np.nan).astype(np.float32)
        self.image, self.target, self.mask = (
            torch.from_numpy(img),
            torch.from_numpy(frac),
            torch.from_numpy(mask),
        )
        self.sleep = sleep

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.sleep:
            time.sleep(self.sleep)
        return {"image": self.image[i], "target": self.target[i], "mask": self.mask[i], "position": (0, i, 0)}


def _config(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(epochs=3, batch_size=8, lr=1e-2, device="cpu", progress=False, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _model(seed: int = 0) -> torch.nn.Module:
    return build_model("native", 6, len(CODES), preset="tiny", class_codes=CODES, seed=seed)


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models run fastest (and without oversubscription on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[Patches, Patches]:
    return Patches(48, seed=1), Patches(16, seed=2)


def test_fit_lowers_the_loss_and_logs(data: tuple[Patches, Patches], tmp_path: Path) -> None:
    train, val = data
    cfg = _config(checkpoint_dir=tmp_path, log_every_samples=16, val_every_samples=24, monitor="val_miou_l3")
    torch.manual_seed(0)
    before = evaluate(_model(), cfg.loader(val, shuffle=False), class_codes=CODES, device="cpu")
    seen: list[str] = []
    hist = fit(
        _model(), cfg.loader(train), cfg.loader(val, shuffle=False), cfg,
        class_codes=CODES, callbacks=[lambda kind, row: seen.append(kind)],
    )  # fmt: skip
    assert [r["epoch"] for r in hist.epochs] == [1, 2, 3]
    assert hist.epochs[-1]["train_loss"] < 0.8 * hist.epochs[0]["train_loss"]
    assert hist.epochs[-1]["val_loss"] < before.loss
    assert hist.epochs[-1]["val_acc_l3"] > max(0.6, before.summary()["acc_l3"])
    assert hist.meta["stop_reason"] == "completed" and hist.meta["device"] == "cpu"
    for key in ("val_miou_l1", "val_f1_l2", "val_mae_l3", "val_tv_l3", "lr", "data_wait_share"):
        assert key in hist.epochs[0]
    assert 0.0 <= hist.epochs[0]["data_wait_share"] <= 1.0
    # per-N-samples rows: every 16 samples, validation every 24
    assert [r["samples_seen"] for r in hist.samples] == [16, 24, 32, 48, 64, 72, 80, 96, 112, 120, 128, 144]
    assert ["val_loss" in r for r in hist.samples][:4] == [False, True, False, True]
    assert seen.count("epoch") == 3 and seen.count("samples") == 12
    # one-cycle: the lr peaks in the middle and ends far below the peak
    lrs = [r["lr"] for r in hist.samples]
    assert max(lrs) > 10 * lrs[-1]
    # files written every epoch
    for name in ("last.pt", "best.pt", "history.json", "history_epochs.csv", "history_samples.csv"):
        assert (tmp_path / name).is_file(), name
    again = History.from_json(tmp_path / "history.json")
    assert _strip(again.epochs) == _strip(hist.epochs)
    header = (tmp_path / "history_epochs.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["epoch", "samples_seen", "step"] and "val_miou_l3" in header
    json.loads((tmp_path / "history.json").read_text())  # strict JSON (NaN written as null)
    best = model_from_checkpoint(tmp_path / "best.pt")
    assert best.spec.class_codes == CODES
    assert hist.meta["best_value"] == pytest.approx(max(r["val_miou_l3"] for r in hist.epochs))
    assert hist.samples_to_reach("val_acc_l3", 0.0) == 24


def test_resume_continues_identically(data: tuple[Patches, Patches], tmp_path: Path) -> None:
    train, val = data
    kw: dict[str, Any] = dict(epochs=2, log_every_samples=20, val_every_samples=40, deterministic=True)
    straight_cfg = _config(checkpoint_dir=tmp_path / "a", **kw)
    straight_model = _model()
    straight = fit(
        straight_model, straight_cfg.loader(train), straight_cfg.loader(val, shuffle=False),
        straight_cfg, class_codes=CODES,
    )  # fmt: skip

    cfg = _config(checkpoint_dir=tmp_path / "b", **kw)
    first = fit(
        _model(), cfg.loader(train), cfg.loader(val, shuffle=False), cfg, class_codes=CODES,
        callbacks=[lambda kind, row: kind == "epoch" and row["epoch"] == 1],
    )  # fmt: skip
    assert first.meta["stop_reason"] == "callback" and len(first.epochs) == 1
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    torch.manual_seed(999)  # a new process: different global RNG, different initial weights
    resumed_model = _model(seed=5)
    resumed = fit(
        resumed_model, cfg.loader(train), cfg.loader(val, shuffle=False),
        cfg.replace(resume=True), class_codes=CODES,
    )  # fmt: skip
    a, b = straight_model.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _strip(resumed.epochs) == _strip(straight.epochs)
    assert _strip(resumed.samples) == _strip(straight.samples)
    assert resumed.meta["stop_reason"] == "completed"
    # resuming a finished run trains nothing more
    done = fit(_model(), cfg.loader(train), None, cfg.replace(resume=True), class_codes=CODES)
    assert len(done.epochs) == 2


def test_early_stopping_and_sample_budget(data: tuple[Patches, Patches]) -> None:
    train, val = data
    cfg = _config(epochs=5, patience=1, min_delta=1e9, lr=1e-3)
    hist = fit(_model(), cfg.loader(train), cfg.loader(val, shuffle=False), cfg, class_codes=CODES)
    assert hist.meta["stop_reason"] == "early_stopping" and len(hist.epochs) == 2
    cfg = _config(epochs=5, max_samples=20)
    hist = fit(_model(), cfg.loader(train), None, cfg, class_codes=CODES)
    assert hist.meta["stop_reason"] == "max_samples"
    assert hist.epochs[-1]["samples_seen"] == 24 and hist.meta["total_steps"] == 3
    assert "val_loss" not in hist.epochs[-1]
    with pytest.raises(ConfigError, match="val_loader"):
        fit(_model(), cfg.loader(train), None, cfg.replace(patience=2), class_codes=CODES)


def test_data_wait_share_is_measured(data: tuple[Patches, Patches]) -> None:
    cfg = _config(epochs=1, batch_size=4, max_samples=16)
    fast = fit(_model(), cfg.loader(Patches(16, seed=3)), None, cfg, class_codes=CODES)
    slow = fit(_model(), cfg.loader(Patches(16, seed=3, sleep=0.03)), None, cfg, class_codes=CODES)
    assert slow.epochs[0]["data_wait_share"] > 0.4
    assert slow.epochs[0]["data_wait_share"] > fast.epochs[0]["data_wait_share"]


def test_lr_find_suggests_a_sensible_rate(data: tuple[Patches, Patches], tmp_path: Path) -> None:
    train, _ = data
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    loader = DataLoader(train, batch_size=8, shuffle=False)
    res = lr_find(model, loader, num_steps=40, start_lr=1e-5, end_lr=10.0, device="cpu")
    plot_lr_find(res, tmp_path / "lr.png")  # plotting draws train's results; train never imports plotting
    assert (tmp_path / "lr.png").stat().st_size > 5000
    assert 1e-5 < res.suggestion < 1.0
    assert res.lr_min10 < max(res.lrs)
    # the loss fell somewhere in the sweep and the range test stopped on divergence or at the end
    assert min(res.losses) < res.losses[0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="pct_start"):
        TrainConfig(pct_start=1.5)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        TrainConfig(resume=True)
    with pytest.raises(ValueError, match="monitor"):
        TrainConfig(monitor="miou")
    cfg = TrainConfig(checkpoint_dir="x", class_weights=[1, 2])  # type: ignore[arg-type]
    assert cfg.checkpoint_dir == Path("x") and cfg.class_weights == (1.0, 2.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(monitor="val_mae_l2").mode == "min" and TrainConfig(monitor="val_f1_l3").mode == "max"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            fit(_model(), [], None, TrainConfig(device="cuda"), class_codes=CODES)


def test_class_weighted_training_and_tuple_batches() -> None:
    ds = Patches(16, seed=4)
    batches = [(ds.image[i : i + 8], ds.target[i : i + 8], ds.mask[i : i + 8]) for i in (0, 8)]
    cfg = _config(epochs=1, class_weights=(1.0, 2.0, 0.5), loss="kl")
    hist = fit(_model(), batches, batches, cfg, class_codes=CODES)
    assert math.isfinite(hist.epochs[0]["train_loss"]) and hist.epochs[0]["val_loss"] >= 0


def test_fit_on_a_real_window_dataset(tmp_path: Path) -> None:
    from landcover.datasets import WindowDataset
    from landcover.models import build_model_for_dataset
    from landcover.testing.cubes import make_cube

    cube = make_cube(tmp_path / "cube.zarr", shape=(128, 128), classes_present=4, chunks=64, seed=0)
    other = make_cube(tmp_path / "other.zarr", shape=(64, 64), classes_present=4, chunks=64, seed=1)
    train = WindowDataset(cube, size=32, stride=16)
    val = WindowDataset(other, size=32)
    assert len(train) >= 8 and len(val) >= 1
    model = build_model_for_dataset("native", train, preset="tiny", seed=0)
    assert model.spec.bands == train.band_names and model.spec.class_codes == train.class_codes
    assert model.spec.band_std == pytest.approx(train.stats.std)
    cfg = _config(epochs=4, batch_size=4, lr=2e-2, checkpoint_dir=tmp_path / "run")
    hist = fit(model, cfg.loader(train), cfg.loader(val, shuffle=False), cfg,
               class_codes=train.class_codes)  # fmt: skip
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert math.isfinite(hist.epochs[-1]["val_miou_l1"])
    rebuilt = model_from_checkpoint(tmp_path / "run" / "last.pt")
    assert rebuilt.spec == model.spec
    rgb = WindowDataset(cube, size=32, bands="rgb", level=2, max_windows=2)
    rgb_model = build_model_for_dataset("rgb-scratch", rgb, preset="tiny")
    batch = next(iter(cfg.loader(rgb, shuffle=False)))
    assert rgb_model(batch["image"]).shape == batch["target"].shape


def _two_groups(model: Any, encoder_scale: float = 0.1) -> list[dict[str, Any]]:
    """Encoder (less its frozen layer1) at ``encoder_scale``, decoder and head at the full LR."""
    for p in model.encoder.layer1.parameters():
        p.requires_grad_(False)
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    return [
        {"params": enc, "lr_scale": encoder_scale, "name": "encoder"},
        {"params": rest, "name": "decoder"},
    ]


def _changes(before: dict[str, torch.Tensor], model: torch.nn.Module, prefix: str) -> float:
    """Mean absolute change of the weights (parameters, not buffers) under ``prefix``."""
    diffs = [
        (p.detach() - before[n]).abs().mean() for n, p in model.named_parameters() if n.startswith(prefix)
    ]
    return float(torch.stack(diffs).mean())


def test_param_groups_train_at_their_own_peak_lr(data: tuple[Patches, Patches]) -> None:
    train, val = data
    cfg = _config(epochs=2, lr=1e-2, log_every_samples=8, val_every_samples=48, val_at_start=True)
    moved: dict[float, float] = {}
    for scale in (0.1, 1.0):
        model = _model()
        groups = _two_groups(model, scale)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        hist = fit(
            model, cfg.loader(train), cfg.loader(val, shuffle=False), cfg, class_codes=CODES,
            param_groups=groups, frozen_modules=[model.encoder.layer1],
        )  # fmt: skip
        # the frozen stage: weights AND BatchNorm running statistics untouched
        for k, v in model.encoder.layer1.state_dict().items():
            assert torch.equal(v, before[f"encoder.layer1.{k}"]), k
        moved[scale] = _changes(before, model, "encoder.layer2.") / _changes(before, model, "decoder.")
        meta = {g["name"]: g for g in hist.meta["param_groups"]}
        assert meta["encoder"]["lr"] == pytest.approx(1e-2 * scale) and meta["decoder"]["lr"] == 1e-2
        assert hist.meta["frozen_modules"] == ["encoder.layer1"]
        if scale == 1.0:
            continue
        # every row (one per step) shows both groups on one schedule, the encoder at a tenth
        rows = hist.samples + hist.epochs
        assert len(hist.samples) == 13 and hist.samples[0]["samples_seen"] == 0  # val_at_start row
        for r in rows:
            assert r["lr_encoder"] == pytest.approx(0.1 * r["lr_decoder"], rel=1e-9)
            assert r["lr"] == pytest.approx(r["lr_decoder"], rel=1e-12)
        peak = max(r["lr_decoder"] for r in rows)
        assert 0.5e-2 < peak <= 1e-2 and max(r["lr_encoder"] for r in rows) <= 1e-3 * (1 + 1e-9)
        assert hist.samples[0]["lr_decoder"] == pytest.approx(1e-2 / cfg.div_factor)
        # the epoch row at 48 samples reuses the validation of the sample row at the same step
        at48 = next(r for r in hist.samples if r["samples_seen"] == 48)
        assert at48["val_loss"] == hist.epochs[0]["val_loss"]
    # Adam's steps scale with the LR: a tenth of the LR moves the encoder far less (relative
    # to the decoder, which trains at the same LR in both runs)
    assert moved[0.1] < 0.4 * moved[1.0]


def test_resume_with_param_groups_continues_identically(
    data: tuple[Patches, Patches], tmp_path: Path
) -> None:
    train, val = data
    kw: dict[str, Any] = dict(epochs=2, log_every_samples=16, val_every_samples=32, deterministic=True)
    kw.update(val_at_start=True)

    def run(directory: str, *, seed: int = 0, resume: bool = False, stop_after: int | None = None) -> Any:
        cfg = _config(checkpoint_dir=tmp_path / directory, resume=resume, **kw)
        model = _model(seed=seed)
        cbs = [] if stop_after is None else [lambda kind, row: kind == "epoch" and row["epoch"] == stop_after]
        hist = fit(
            model, cfg.loader(train), cfg.loader(val, shuffle=False), cfg, class_codes=CODES,
            callbacks=cbs, param_groups=_two_groups(model), frozen_modules=[model.encoder.layer1],
        )  # fmt: skip
        return model, hist

    straight_model, straight = run("a")
    _, first = run("b", stop_after=1)
    assert first.meta["stop_reason"] == "callback" and len(first.epochs) == 1
    torch.manual_seed(999)
    resumed_model, resumed = run("b", seed=5, resume=True)
    a, b = straight_model.state_dict(), resumed_model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _strip(resumed.epochs) == _strip(straight.epochs)
    assert _strip(resumed.samples) == _strip(straight.samples)
    assert "lr_encoder" in resumed.epochs[-1] and resumed.samples[0]["samples_seen"] == 0

    # another layout cannot resume that checkpoint: other LR scale, other membership, no groups
    _, first = run("c", stop_after=1)
    cfg = _config(checkpoint_dir=tmp_path / "c", resume=True, **kw)
    for change in ("scale", "members", "none"):
        model = _model()
        groups: list[dict[str, Any]] | None = _two_groups(model, 0.5 if change == "scale" else 0.1)
        if change == "members":
            for p in model.encoder.layer1.parameters():
                p.requires_grad_(True)
            groups[0]["params"] = [p for p in model.encoder.parameters()]  # type: ignore[index]
        elif change == "none":
            groups = None
        with pytest.raises(ConfigError, match="cannot resume.*parameter groups"):
            fit(
                model, cfg.loader(train), None, cfg, class_codes=CODES,
                param_groups=groups, frozen_modules=[model.encoder.layer1],
            )  # fmt: skip


def test_param_groups_are_validated() -> None:
    model = _model()
    p0, p1 = list(model.parameters())[:2]
    everything = list(model.parameters())
    bad: list[tuple[Any, str]] = [
        ([{"params": everything}, {"params": [p0]}], "groups 'group0' and 'group1'"),
        ([{"params": everything[1:]}], "in no parameter group"),
        ([{"params": everything, "lr": 1e-3, "lr_scale": 0.1}], "not both"),
        ([{"params": everything, "momentum": 0.9}], "unknown keys"),
        ([{"params": everything, "name": "a b"}], "identifier"),
        ([{"params": everything, "lr_scale": 0.0}], "positive"),
        ([{"params": [torch.nn.Parameter(torch.zeros(1))]}], "not a parameter of the model"),
        ({"params": everything}, "sequence of mappings"),
    ]
    for groups, message in bad:
        with pytest.raises(ValueError, match=message):
            fit(model, [], None, _config(), class_codes=CODES, param_groups=groups)
    p0.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        fit(model, [], None, _config(), class_codes=CODES, param_groups=[{"params": everything}])
    with pytest.raises(ValueError, match="not a submodule"):
        fit(model, [], None, _config(), class_codes=CODES, frozen_modules=[torch.nn.BatchNorm2d(3)])
    del p1


class _WatchedLoss(torch.Tensor):
    """A loss tensor that counts how often a single value is read from it (a device sync on a GPU)."""

    reads = 0

    def __float__(self) -> float:
        _WatchedLoss.reads += 1
        return super().__float__()

    def item(self) -> Any:
        _WatchedLoss.reads += 1
        return super().item()


def test_fit_does_not_wait_for_each_step_and_logs_the_same_losses(data: tuple[Patches, Patches]) -> None:
    """The loop leaves each step's loss unread (on a GPU the host queues the next step meanwhile);
    rows read the pending losses at once and get exactly the per-sample mean of the steps' losses."""
    from landcover.losses import SoftLabelLoss
    from landcover.train import TrainState, train_steps

    train, _ = data
    base = SoftLabelLoss("ce")
    seen: list[tuple[float, int]] = []

    def loss_fn(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        loss = base(logits, target, mask)
        seen.append((float(loss.detach()), int(logits.shape[0])))
        return loss.as_subclass(_WatchedLoss)

    cfg = _config(epochs=2, log_every_samples=16, monitor="train_loss")
    _WatchedLoss.reads = 0
    hist = fit(_model(), cfg.loader(train), None, cfg, class_codes=CODES, loss_fn=loss_fn)
    assert len(seen) == 12  # 48 windows, batch 8, 2 epochs
    assert _WatchedLoss.reads == 0
    for epoch, row in enumerate(hist.epochs):
        steps = seen[6 * epoch : 6 * (epoch + 1)]
        total = 0.0
        for v, n in steps:  # the sum fit made when it read every step's loss
            total += v * n
        assert row["train_loss"] == total / 48
    first = 0.0
    for v, n in seen[:2]:
        first += v * n
    assert hist.samples[0]["samples_seen"] == 16 and hist.samples[0]["train_loss"] == first / 16

    # the data-local legs' steps too: summed losses equal, nothing read step by step
    seen.clear()
    _WatchedLoss.reads = 0
    state = TrainState.create(_model(), lr=1e-2, total_steps=5, loss_fn=loss_fn, device="cpu")
    res = train_steps(state, cfg.loader(train), 5, seed=3)
    assert _WatchedLoss.reads == 0 and res.batches == 5 and res.samples == 40
    total = 0.0
    for v, n in seen:
        total += v * n
    assert res.loss_sum == total


def test_fit_with_loader_workers_trains_on_the_same_batches_as_without(data: tuple[Patches, Patches]) -> None:
    """Epoch e's batches are those of a fresh loader iterator reseeded for e, whatever the worker count:
    a loader with persistent workers re-entered every epoch skipped the base-seed draw from its second epoch,
    so its order (and the trained model) depended on ``num_workers``."""
    train, _ = data
    runs = {}
    for workers in (0, 2):
        cfg = _config(epochs=3, num_workers=workers, monitor="train_loss")
        hist = fit(_model(), cfg.loader(train), None, cfg, class_codes=CODES)
        runs[workers] = [r["train_loss"] for r in hist.epochs]
    assert runs[0] == runs[2]


class _Numbers(Dataset[int]):
    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> int:
        return i


def test_span_epochs_prefetches_across_epoch_turnovers() -> None:
    """The spanning loader's workers are handed the next epoch's first batches before this epoch's last one
    is consumed (a re-entered loader starts from empty), and each epoch is a fresh iterator's order."""
    from landcover.datasets import make_loader, span_epochs
    from landcover.train import _reseed_loader

    loader = make_loader(_Numbers(), 4, 2, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(list(loader)) == 5  # an earlier pass (as an LR range test makes) leaves persistent workers
    earlier = [w for w in loader._iterator._workers]  # type: ignore[union-attr]
    assert all(w.is_alive() for w in earlier)
    events: list[tuple[str, int]] = []

    def before(e: int) -> None:
        events.append(("epoch", e))
        _reseed_loader(loader, 5, e)

    spanned = span_epochs(loader, range(1, 4), 5, before_epoch=before, worker_seed=1)
    assert spanned is not None and len(spanned) == 15
    for w in earlier:  # stopped, not left idle beside the span's workers
        w.join(timeout=10)
    assert not any(w.is_alive() for w in earlier) and loader._iterator is None
    got = []
    for i, batch in enumerate(spanned):
        events.append(("batch", i))
        got.append(batch.tolist())
    # epoch 2 (and 3) were started while 2 or more batches of the previous epoch were still to come
    assert events.index(("epoch", 2)) < events.index(("batch", 3))
    assert events.index(("epoch", 3)) < events.index(("batch", 8))

    single = make_loader(_Numbers(), 4, 0, shuffle=True, generator=torch.Generator().manual_seed(0))
    want = []
    for e in range(1, 4):
        _reseed_loader(single, 5, e)
        want += [b.tolist() for b in single]
    assert got == want
    assert sorted(sum(got[:5], [])) == list(range(20))
    # a limit on the steps of an epoch cuts each epoch, not the run
    short = span_epochs(
        loader, range(1, 3), 3, before_epoch=lambda e: _reseed_loader(loader, 5, e), worker_seed=1
    )
    assert short is not None and len(short) == 6
    assert [b.tolist() for b in short] == want[0:3] + want[5:8]
    # what cannot be spanned is iterated epoch by epoch
    assert span_epochs(single, range(2), 5, before_epoch=before, worker_seed=1) is None
    unseeded = make_loader(_Numbers(), 4, 2, shuffle=True)
    assert span_epochs(unseeded, range(2), 5, before_epoch=before, worker_seed=1) is None
