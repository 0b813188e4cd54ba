from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import torch
import torchvision

from landcover.errors import ConfigError, InputFileError, LandcoverError
from landcover.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMAGENET_WEIGHT_FILES,
    MODEL_NAMES,
    ModelSpec,
    build_model,
    find_imagenet_weights,
    load_checkpoint,
    model_from_checkpoint,
    save_model,
)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any attempt to download fails loudly; the torch hub cache starts empty."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    state = torchvision.models.resnet18().state_dict()  # random weights, no download
    path = tmp_path_factory.mktemp("weights") / "my_resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize(
    ("name", "channels"),
    [("native", 6), ("native", 7), ("rgb-scratch", 3), ("native-imagenet-init", 6), ("rgb-imagenet", 3)],
)
def test_output_shapes_every_model(
    name: str, channels: int, resnet18_state: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    pretrained = resnet18_state[0] if name in ("rgb-imagenet", "native-imagenet-init") else None
    preset = "base" if pretrained is not None else "tiny"
    model = build_model(name, channels, 5, preset=preset, pretrained=pretrained)  # type: ignore[arg-type]
    model.eval()
    with torch.no_grad():
        for h, w in ((64, 64), (48, 80), (37, 51)):
            out = model(torch.randn(2, channels, h, w))
            assert out.shape == (2, 5, h, w)
            assert out.dtype == torch.float32
    assert model.spec.name == name and len(model.spec.bands) == channels
    assert set(MODEL_NAMES) == {"native", "rgb-imagenet", "rgb-scratch", "native-imagenet-init", "ssl4eo"}


@pytest.mark.parametrize(("encoder", "depth"), [("resnet34", 2), ("resnet50", 1), ("resnet18", 4)])
def test_encoders_width_depth(encoder: str, depth: int) -> None:
    model = build_model("native", 6, 3, encoder=encoder, width=0.125, depth=depth)  # type: ignore[arg-type]
    assert model(torch.randn(2, 6, 64, 64)).shape == (2, 3, 64, 64)
    assert len(model.spec.decoder_channels) == depth + 1
    small = sum(p.numel() for p in build_model("native", 6, 3, preset="tiny").parameters())
    big = sum(p.numel() for p in build_model("native", 6, 3, preset="small").parameters())
    assert small * 4 < big


def test_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ConfigError, match="3 channels"):
        build_model("rgb-scratch", 6, 3, preset="tiny")
    model = build_model("native", 6, 3, preset="tiny")
    with pytest.raises(ValueError, match=r"\(B, 6, H, W\)"):
        model(torch.randn(1, 7, 16, 16))
    with pytest.raises(ConfigError, match="scratch"):
        build_model("native", 6, 3, pretrained="hub")


State = tuple[Path, dict[str, torch.Tensor]]


def test_rgb_imagenet_loads_the_given_state_dict(resnet18_state: State) -> None:
    path, state = resnet18_state
    model = build_model("rgb-imagenet", 3, 4, pretrained=path)
    enc = model.encoder.state_dict()
    assert set(enc) == {k for k in state if not k.startswith("fc.")}
    for key, value in enc.items():
        assert torch.equal(value, state[key]), key
    # random weights are not torchvision's published file: never called "imagenet"
    assert model.spec.pretrained.startswith("unverified weights (sha256 ")
    assert model.spec.pretrained_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.spec.bands == ("red", "green", "blue")


def test_native_imagenet_init_places_rgb_filters_by_band_name(
    resnet18_state: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, state = resnet18_state
    model = build_model("native-imagenet-init", 6, 4, pretrained=path)
    w = model.encoder.conv1.weight.detach()
    rgb = state["conv1.weight"]  # torchvision order: red, green, blue
    scale = 3 / 6
    assert model.spec.bands == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert torch.allclose(w[:, 0], rgb[:, 2] * scale)  # blue
    assert torch.allclose(w[:, 1], rgb[:, 1] * scale)  # green
    assert torch.allclose(w[:, 2], rgb[:, 0] * scale)  # red
    for extra in (3, 4, 5):
        assert torch.allclose(w[:, extra], rgb.mean(dim=1) * scale)
    # the rest of the encoder is copied unchanged
    assert torch.equal(model.encoder.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    # activations keep their magnitude for identical (perfectly correlated) bands
    x = torch.randn(1, 1, 32, 32)
    conv6 = torch.nn.functional.conv2d(x.expand(1, 6, 32, 32), w, stride=2, padding=3)
    conv3 = torch.nn.functional.conv2d(x.expand(1, 3, 32, 32), rgb, stride=2, padding=3)
    assert conv6.std().item() == pytest.approx(conv3.std().item(), rel=1e-4)


def test_hub_cache_is_used_and_nothing_is_downloaded(
    resnet18_state: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    assert str(hub).startswith(str(tmp_path))
    assert find_imagenet_weights("resnet18") is None
    with pytest.raises(LandcoverError) as err:
        build_model("rgb-imagenet", 3, 4)
    msg = str(err.value)
    assert IMAGENET_WEIGHT_FILES["resnet18"] in msg and str(hub) in msg and "--imagenet-weights" in msg
    assert "curl" in msg
    with pytest.raises(LandcoverError, match="not a file"):
        build_model("rgb-imagenet", 3, 4, pretrained=tmp_path / "nope.pth")
    hub.mkdir(parents=True)
    (hub / IMAGENET_WEIGHT_FILES["resnet18"]).write_bytes(resnet18_state[0].read_bytes())
    assert find_imagenet_weights("resnet18") == hub / IMAGENET_WEIGHT_FILES["resnet18"]
    assert find_imagenet_weights("resnet18", hub) == hub / IMAGENET_WEIGHT_FILES["resnet18"]
    model = build_model("rgb-imagenet", 3, 4, pretrained="hub")
    assert torch.equal(model.encoder.conv1.weight, resnet18_state[1]["conv1.weight"])


def test_bad_weight_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputFileError, match="junk.pth"):
        build_model("rgb-imagenet", 3, 4, pretrained=junk)
    other = tmp_path / "other.pth"
    torch.save({"foo": torch.zeros(1)}, other)
    with pytest.raises(InputFileError, match="conv1.weight"):
        build_model("rgb-imagenet", 3, 4, pretrained=other)
    with pytest.raises(ConfigError, match="width=1.0"):
        build_model("rgb-imagenet", 3, 4, pretrained=other, preset="tiny")


def test_imagenet_input_norm_is_applied_inside_the_model() -> None:
    a = build_model("rgb-scratch", 3, 2, preset="tiny", input_norm="imagenet", seed=0).eval()
    b = build_model("rgb-scratch", 3, 2, preset="tiny", seed=0).eval()
    b.load_state_dict(a.state_dict(), strict=False)
    b.encoder.load_state_dict(a.encoder.state_dict())
    x = torch.rand(1, 3, 32, 32)
    z = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(a(x), b(z), atol=1e-5)
    with pytest.raises(ConfigError, match="input_norm"):
        build_model("native", 6, 2, input_norm="minmax")  # type: ignore[arg-type]


def test_checkpoint_roundtrip_rebuilds_the_model(tmp_path: Path) -> None:
    model = build_model(
        "native", 7, 3, preset="tiny", class_codes=[211, 311, 512], band_mean=[0.1] * 7, band_std=[1.0] * 7
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    path = save_model(tmp_path / "m.pt", model, metrics={"miou": 0.5})
    raw = torch.load(path, weights_only=True)  # primitives and tensors only
    assert raw["metrics"] == {"miou": 0.5}
    again = model_from_checkpoint(path)
    assert again.spec == model.spec
    assert again.spec.bands[-1] == "thermal" and again.spec.class_codes == (211, 311, 512)
    x = torch.randn(1, 7, 40, 40)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert ModelSpec.from_dict(model.spec.to_dict()) == model.spec


def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(InputFileError, match="evil.pt"):
        load_checkpoint(evil)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}}, plain)
    with pytest.raises(InputFileError, match="spec"):
        model_from_checkpoint(plain)
    with pytest.raises(InputFileError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="bands"):
        ModelSpec("native", 6, 3, decoder_channels=(8,) * 5, bands=("a",))
    with pytest.raises(ValueError, match="unknown model"):
        ModelSpec("unet", 6, 3, decoder_channels=(8,) * 5, bands=("a",) * 6)
    with pytest.raises(ValueError, match="decoder_channels"):
        ModelSpec("native", 6, 3, decoder_channels=(8,), bands=("a",) * 6)


def test_group_norm_models_have_no_batch_statistics(tmp_path: Path, resnet18_state: State) -> None:
    model = build_model("native", 6, 4, preset="tiny", norm="group", seed=0)
    mods = list(model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in mods)
    groups = [m for m in mods if isinstance(m, torch.nn.GroupNorm)]
    assert groups and all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8 for m in groups)
    assert not any("running_" in k for k in model.state_dict())  # nothing batch-dependent travels
    # a sample's output does not depend on the other samples of its batch, even in training mode
    model.train()
    x = torch.randn(4, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:1], model(x[:1]))
    batch = build_model("native", 6, 4, preset="tiny", seed=0).train()
    with torch.no_grad():
        assert not torch.allclose(batch(x)[:1], batch(x[:1]))
    # the spec records it and checkpoints rebuild it
    again = model_from_checkpoint(save_model(tmp_path / "g.pt", model))
    assert again.spec.norm == "group" and again.spec == model.spec
    assert ModelSpec.from_dict({k: v for k, v in model.spec.to_dict().items() if k != "norm"}).norm == "batch"
    with pytest.raises(ConfigError, match="norm"):
        build_model("rgb-imagenet", 3, 4, pretrained=resnet18_state[0], norm="group")
    with pytest.raises(ConfigError, match="norm"):
        build_model("native", 6, 4, norm="layer")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ssl4eo_state(tmp_path_factory: pytest.TempPathFactory) -> State:
    """A timm-style resnet18 state dict with 7 input channels (SSL4EO-L TM TOA shapes), random weights."""
    torch.manual_seed(7)
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(7, 64, kernel_size=7, stride=2, padding=3, bias=False)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("ssl4eo") / "resnet18_landsat_tm_toa_moco-1c691b4f.pth"
    torch.save({f"backbone.{k}": v for k, v in state.items()}, path)  # a wrapped checkpoint
    return path, state


@pytest.mark.parametrize("thermal", [False, True])
def test_ssl4eo_picks_first_layer_filters_by_band_name(ssl4eo_state: State, thermal: bool) -> None:
    from landcover.weights import SSL4EO_TM_BANDS

    path, state = ssl4eo_state
    channels = 7 if thermal else 6
    model = build_model("ssl4eo", channels, 4, pretrained=path)
    w = model.encoder.conv1.weight.detach()
    src = state["conv1.weight"]
    assert w.shape == (64, channels, 7, 7)
    for i, band in enumerate(model.spec.bands):
        assert torch.equal(w[:, i], src[:, SSL4EO_TM_BANDS.index(band)]), band
    # our cubes keep thermal last, SSL4EO's published order has it sixth (TM band 6)
    assert torch.equal(w[:, 5], src[:, 6])  # swir2 = TM band 7
    if thermal:
        assert torch.equal(w[:, 6], src[:, 5])
    assert torch.equal(model.encoder.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.spec.input_norm == "unit"
    assert model.spec.pretrained.startswith("unverified weights")  # random bytes, not the published file
    # inputs are clipped to [0, 1] inside the model
    model.eval()
    x = torch.rand(1, channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x * 3 - 1), model(x.mul(3).sub(1).clamp(0, 1)))


def test_ssl4eo_is_found_by_its_published_name_in_the_hub_cache(ssl4eo_state: State) -> None:
    with pytest.raises(LandcoverError, match="--download-weights"):
        build_model("ssl4eo", 6, 3)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    (hub / ssl4eo_state[0].name).write_bytes(ssl4eo_state[0].read_bytes())
    model = build_model("ssl4eo", 6, 3, pretrained="hub")
    assert torch.equal(model.encoder.conv1.weight[:, 0], ssl4eo_state[1]["conv1.weight"][:, 0])
    with pytest.raises(ConfigError, match="ssl4eo-tm-toa-moco-resnet34"):
        build_model("ssl4eo", 6, 3, encoder="resnet34")
    with pytest.raises(ConfigError, match="TM bands"):
        build_model("ssl4eo", 3, 3, bands=("red", "green", "ndvi"), pretrained="hub")


def test_finetune_param_groups_split_encoder_and_decoder() -> None:
    from landcover.models import finetune_param_groups

    model = build_model("native", 6, 3, preset="tiny")
    groups = finetune_param_groups(model, 0.1)
    assert [g["name"] for g in groups] == ["encoder", "decoder"]
    assert groups[0]["lr_scale"] == 0.1 and groups[1]["lr_scale"] == 1.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.encoder.parameters()}
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        finetune_param_groups(model, 0.0)


def test_imagenet_input_norm_for_multispectral_inputs() -> None:
    model = build_model("native", 6, 2, preset="tiny", input_norm="imagenet")
    mean = model.input_mean.flatten().tolist()
    assert mean[2] == pytest.approx(IMAGENET_MEAN[0])  # red is channel 2 in TM order
    assert mean[0] == pytest.approx(IMAGENET_MEAN[2])  # blue
    assert mean[3] == pytest.approx(sum(IMAGENET_MEAN) / 3)  # nir: the mean of the three
