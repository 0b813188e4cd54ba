"""Publishing: model package (safetensors + card) and dataset package (Zarr + STAC + card) round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import torch
import xarray as xr

from landcover.errors import IncompleteStoreError, InputFileError
from landcover.models import build_model, save_model
from landcover.predict import predict_cube
from landcover.publish import (
    LANDSAT_ATTRIBUTION,
    clc_attribution,
    load_published_model,
    publish_dataset,
    publish_model,
    read_published_spec,
    validate_stac,
)
from landcover.store import open_cube
from landcover.testing.cubes import make_cube

BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
CODES = (111, 211, 311, 312, 411, 512)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return build_model(
        "native",
        len(BANDS),
        len(CODES),
        preset="tiny",
        bands=BANDS,
        class_codes=CODES,
        band_mean=[0.05, 0.07, 0.06, 0.25, 0.2, 0.12],
        band_std=[0.02, 0.03, 0.03, 0.08, 0.07, 0.05],
        seed=seed,
    )


def write_report(path: Path) -> Path:
    path.mkdir(parents=True)
    metrics = {
        "primary_metric": "miou_l3",
        "models": {
            "native": {
                "seeds": [0, 1],
                "test": {"acc_l3": {"mean": 0.8125, "std": 0.0125}, "miou_l3": {"mean": 0.4375, "std": 0.02}},
            },
            "rgb-scratch": {"seeds": [0, 1], "test": {"acc_l3": {"mean": 0.5, "std": 0.1}}},
        },
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_model_package_round_trips_to_identical_predictions(tmp_path: Path) -> None:
    model = tiny_model(seed=3)
    ckpt = save_model(tmp_path / "best.pt", model, history_row={"epoch": 2, "val_miou_l3": 0.4})
    from landcover.experiment import record_provenance

    train_cube = make_cube(tmp_path / "train.zarr", shape=(24, 24), classes=CODES, chunks=32)
    # declared real (the attribution path of real data): the card names the CORINE edition it records
    record_provenance(train_cube, synthetic=False, clc_edition="CLC2018")
    out = publish_model(
        ckpt,
        tmp_path / "pkg",
        report=write_report(tmp_path / "report"),
        cubes=[train_cube],
        training_data=["cube A"],
        license="CC-BY-4.0",
    )
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.json", "model.safetensors"]

    loaded = load_published_model(out)
    assert loaded.spec == model.spec
    x = torch.randn(2, len(BANDS), 48, 40, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    info = read_published_spec(out)
    assert info["bands"] == list(BANDS)
    assert [c["code"] for c in info["classes"]] == list(CODES)
    assert info["normalization"]["mean"] == pytest.approx([0.05, 0.07, 0.06, 0.25, 0.2, 0.12])
    assert info["metrics"]["test"]["acc_l3"]["mean"] == 0.8125  # the entry of *this* model
    card = (out / "README.md").read_text()
    for text in ("| 3 | nir |", "Continuous urban fabric", "0.812 ± 0.013", "cube A", "## Limitations"):
        assert text in card, text
    assert LANDSAT_ATTRIBUTION in card and clc_attribution("2018") in card
    assert "data **real**" in card and "CORINE Land Cover edition: CLC2018." in card

    # the whole-scene predictor accepts the published folder like a checkpoint
    cube = make_cube(tmp_path / "c.zarr", shape=(64, 72), classes=CODES, chunks=32)
    a = predict_cube(out, cube, window=32, overlap=8, fractions_dtype="float32", device="cpu")
    b = predict_cube(ckpt, cube, window=32, overlap=8, fractions_dtype="float32", device="cpu")
    np.testing.assert_array_equal(a["fractions"].values, b["fractions"].values)
    np.testing.assert_array_equal(a["class_map"].values, b["class_map"].values)
    assert set(np.unique(a["class_map"].values)) <= set(CODES) | {0}


def test_model_package_detects_tampering_and_refuses_overwrite(tmp_path: Path) -> None:
    cube = make_cube(tmp_path / "train.zarr", shape=(16, 16), classes=CODES, chunks=32)
    publish = {"cubes": [cube], "license": "MIT"}
    out = publish_model(tiny_model(), tmp_path / "pkg", **publish)
    with pytest.raises(InputFileError, match="already exists"):
        publish_model(tiny_model(), out, **publish)
    publish_model(tiny_model(seed=1), out, overwrite=True, **publish)
    info = json.loads((out / "model.json").read_text())
    assert info["metrics"] is None and "No metrics were supplied" in (out / "README.md").read_text()
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputFileError, match="checksum"):
        load_published_model(out)
    with pytest.raises(InputFileError, match="not a published landcover model"):
        load_published_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_model_card_lists_training_data_metrics_with_intervals_and_licence(tmp_path: Path) -> None:
    """Issue 19: scenes, region, CLC edition, synthetic/real, 95 % intervals, the licence asked for."""
    from landcover.experiment import record_provenance

    cube = make_cube(tmp_path / "train.zarr", shape=(24, 24), classes=CODES, chunks=32)
    record_provenance(cube, synthetic=True, source="synthetic")
    report = write_report(tmp_path / "report")
    metrics = json.loads((report / "metrics.json").read_text())
    native = metrics["models"]["native"]
    native["test_ci"] = {"miou_l3": {"estimate": 0.4375, "low": 0.401, "high": 0.472, "level": 0.95}}
    native["per_seed"] = {"acc_l3": [0.8, 0.825]}
    (report / "metrics.json").write_text(json.dumps(metrics))
    ckpt = save_model(tmp_path / "best.pt", tiny_model())
    out = publish_model(ckpt, tmp_path / "pkg", report=report, cubes=[cube], license="Apache-2.0")
    card = (out / "README.md").read_text()
    src = open_cube(cube)
    w, s, e, n = src.rio.transform_bounds("EPSG:4326")
    for text in (
        "Cube `train.zarr`: data **synthetic",
        f"region (WGS84 W, S, E, N) {round(w, 4)}, {round(s, 4)}",
        "CORINE Land Cover edition: none (synthetic labels)",
        "| miou_l3 | 0.438 ± 0.020 | [0.401, 0.472] (block bootstrap",
        "| acc_l3 | 0.812 ± 0.013 | [",
        "Weights: Apache-2.0.",
        "no Landsat or CORINE data were used",
    ):
        assert text in card, text
    assert "<year>" not in card and "edition year of the CORINE data used" not in card
    info = read_published_spec(out)
    assert info["license"] == "Apache-2.0" and info["training"]["cubes"][0]["synthetic"] is True


def test_model_package_asks_for_licence_and_training_cubes(tmp_path: Path) -> None:
    from landcover.errors import ConfigError

    cube = make_cube(tmp_path / "train.zarr", shape=(16, 16), classes=CODES, chunks=32)
    with pytest.raises(ConfigError, match="--license"):
        publish_model(tiny_model(), tmp_path / "pkg", cubes=[cube])
    with pytest.raises(ConfigError, match="--cube"):
        publish_model(tiny_model(), tmp_path / "pkg", license="MIT")
    assert not (tmp_path / "pkg").exists()


def test_model_package_files_follow_the_umask(tmp_path: Path) -> None:
    """model.safetensors was mode 0600 whatever the umask; every file of a package follows the umask."""
    import os

    cube = make_cube(tmp_path / "train.zarr", shape=(16, 16), classes=CODES, chunks=32)
    old = os.umask(0o022)
    try:
        out = publish_model(tiny_model(), tmp_path / "pkg", cubes=[cube], license="MIT")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"README.md": 0o644, "model.json": 0o644, "model.safetensors": 0o644}


def test_dataset_package_refuses_a_placeholder_year(tmp_path: Path) -> None:
    """No `<year>` in description, attribution or card: a cube without an edition year needs --clc-year."""
    from landcover.errors import ConfigError

    cube = make_cube(tmp_path / "a.zarr", shape=(16, 16), classes=CODES, chunks=32)
    with pytest.raises(InputFileError, match="no CORINE edition year.*--clc-year") as exc:
        publish_dataset(cube, tmp_path / "pkg")
    assert "a.zarr" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="not a year"):
        publish_dataset(cube, tmp_path / "pkg", clc_year="<year>")
    with pytest.raises(ConfigError, match="placeholder '<year>'"):
        publish_dataset(cube, tmp_path / "pkg", clc_year=2018, description="CORINE <year> fractions")
    assert not (tmp_path / "pkg").exists()
    out = publish_dataset(cube, tmp_path / "pkg", clc_year=2012)
    coll = json.loads((out / "collection.json").read_text())
    for text in (coll["description"], coll["attribution"], (out / "README.md").read_text()):
        assert "<year>" not in text and "2012" in text


def test_dataset_year_is_inferred_from_the_cube_provenance(tmp_path: Path) -> None:
    from landcover.experiment import record_provenance

    cube = make_cube(tmp_path / "a.zarr", shape=(16, 16), classes=CODES, chunks=32)
    record_provenance(cube, clc_edition="CLC2006 (from the file name)")
    out = publish_dataset(cube, tmp_path / "pkg")
    assert clc_attribution("2006") in (out / "README.md").read_text()


def test_dataset_package_stac_and_card(tmp_path: Path) -> None:
    c1 = make_cube(tmp_path / "in" / "a.zarr", shape=(40, 50), times=2, classes=CODES, chunks=32, seed=1)
    c2 = make_cube(
        tmp_path / "in" / "b.zarr",
        shape=(30, 30),
        classes=CODES,
        chunks=32,
        seed=2,
        origin=(420_015.0, 5_480_015.0),
    )
    out = publish_dataset([c1, c2], tmp_path / "pkg", clc_year=2018)

    checked = validate_stac(out)
    assert checked["items"] == 2 and checked["objects"] == 3
    assert checked["core_schema_validated"] == 3  # jsonschema + pystac's bundled core schemas, offline

    coll = pystac.read_file(str(out / "collection.json"))
    assert isinstance(coll, pystac.Collection)
    assert coll.license == "other"
    hrefs = [link.href for link in coll.links if link.rel == "license"]
    assert any("copernicus" in h for h in hrefs) and any("usgs" in h for h in hrefs)
    assert clc_attribution(2018) in coll.extra_fields["attribution"]
    assert "European Environment Agency (EEA)" in coll.extra_fields["attribution"]
    assert LANDSAT_ATTRIBUTION in coll.extra_fields["attribution"]
    items = {i.id: i for i in coll.get_items(recursive=True)}
    assert set(items) == {"a", "b"}
    a = items["a"]
    src = open_cube(c1)
    assert a.properties["proj:code"] == "EPSG:32632"
    assert a.properties["proj:shape"] == [40, 50]
    assert a.properties["proj:transform"] == pytest.approx(list(src.rio.transform())[:6])
    assert a.common_metadata.start_datetime is not None  # two times -> a range
    classes = a.assets["zarr"].extra_fields["classification:classes"]
    assert [c["value"] for c in classes] == list(CODES)
    assert a.properties["cube:dimensions"]["band"]["values"] == list(BANDS)
    # the asset is the copied store, and it opens to the same data
    store = Path(a.assets["zarr"].get_absolute_href())
    assert store.is_relative_to(out.resolve()) or store.is_relative_to(out)
    copied = open_cube(store)
    np.testing.assert_array_equal(copied["labels"].values, src["labels"].values)
    w, s, e, n = coll.extent.spatial.bboxes[0]
    assert w < a.bbox[0] + 1e-9 and n >= items["b"].bbox[3]  # type: ignore[index]

    card = (out / "README.md").read_text()
    for text in (
        "## Sources",
        "## Processing",
        "## Classes",
        "| 311 | Broad-leaved forest | `#",
        "## Citation",
        clc_attribution(2018),
        LANDSAT_ATTRIBUTION,
        "data/a.zarr",
    ):
        assert text in card, text


def test_dataset_package_by_reference_and_bad_input(tmp_path: Path) -> None:
    c1 = make_cube(tmp_path / "a.zarr", shape=(20, 20), classes=CODES, chunks=32)
    out = publish_dataset(c1, tmp_path / "pkg", copy=False, clc_year=2018)
    assert not (out / "data").exists()
    item = next(iter(pystac.read_file(str(out / "collection.json")).get_items(recursive=True)))
    assert Path(item.assets["zarr"].href) == c1.resolve()
    assert validate_stac(out)["items"] == 1
    broken = make_cube(tmp_path / "broken.zarr", shape=(20, 20), classes=CODES, complete=False)
    with pytest.raises(IncompleteStoreError):
        publish_dataset(broken, tmp_path / "pkg2", clc_year=2018)
    assert not (tmp_path / "pkg2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(InputFileError, match="not a readable STAC"):
        validate_stac(tmp_path)
    xr.open_zarr(c1)  # the referenced store is untouched


def test_publish_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from landcover.cli import main

    ckpt = save_model(tmp_path / "best.pt", tiny_model())
    report = write_report(tmp_path / "report")
    cube = make_cube(tmp_path / "c.zarr", shape=(20, 24), classes=CODES, chunks=32)
    model = ["publish", "model", str(ckpt), "--report", str(report), "--cube", str(cube)]
    assert main([*model, "--out", str(tmp_path / "m0")]) == 1
    assert "--license" in capsys.readouterr().err
    assert main([*model, "--license", "CC-BY-4.0", "--out", str(tmp_path / "m")]) == 0
    assert load_published_model(tmp_path / "m").spec.class_codes == CODES
    assert main(["publish", "dataset", str(cube), "--out", str(tmp_path / "d"), "--clc-year", "2012"]) == 0
    out = capsys.readouterr().out
    assert "core schema checks: 2/2" in out
    assert clc_attribution(2012) in (tmp_path / "d" / "README.md").read_text()
    missing = ["publish", "model", str(tmp_path / "missing.pt"), "--cube", str(cube), "--license", "MIT"]
    assert main([*missing, "--out", str(tmp_path / "m2")]) == 1
    assert "missing.pt" in capsys.readouterr().err


# -- STAC for xarray/odc-stac users: open kwargs, classification, extension schemas (offline) --------

SCHEMAS = Path(__file__).parent / "data" / "stac-schemas"
XARRAY_URI = "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json"
CLASSIFICATION_URI = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"


def test_dataset_zarr_asset_opens_with_its_xarray_kwargs_and_validates(tmp_path: Path) -> None:
    cube = make_cube(tmp_path / "in" / "a.zarr", shape=(24, 20), classes=CODES, chunks=32, seed=4)
    out = publish_dataset([cube], tmp_path / "pkg", clc_year=2018)
    checked = validate_stac(out, extension_schemas=SCHEMAS)
    # the collection's classification summary; the item's xarray-assets and classification
    assert checked["extensions_schema_validated"] >= 3
    item = next(pystac.read_file(str(out / "collection.json")).get_items())  # type: ignore[attr-defined]
    assert XARRAY_URI in item.stac_extensions
    asset = item.assets["zarr"]
    ds = xr.open_dataset(asset.get_absolute_href(), **asset.extra_fields["xarray:open_kwargs"])
    ref = open_cube(cube)
    assert ds["reflectance"].chunks is not None  # lazy, as the kwargs ask
    np.testing.assert_allclose(ds["reflectance"].values, ref["reflectance"].values, rtol=1e-6, equal_nan=True)


def test_prediction_item_has_classification_for_both_encodings(tmp_path: Path) -> None:
    import rasterio

    from landcover.predict import predict_map
    from landcover.publish import validate_stac_item

    cube = make_cube(tmp_path / "c.zarr", shape=(40, 36), classes=CODES, classes_present=6, chunks=32, seed=5)
    kw = {"window": 32, "overlap": 8, "device": "cpu", "amp": False}
    outputs = predict_map(tiny_model(), cube, tmp_path / "pred", **kw)
    assert outputs.stac_item == tmp_path / "pred" / "item.json"
    checked = validate_stac_item(outputs.stac_item, extension_schemas=SCHEMAS)
    assert checked["extensions_validated"] == 2  # classification + xarray-assets; projection unchecked
    item = pystac.Item.from_file(str(outputs.stac_item))
    assert item.datetime is not None and item.datetime.year == 1990
    assert item.properties["landcover:datetime_source"] == "acquisition"
    cog_classes = {c["value"]: c for c in item.assets["class_map"].extra_fields["classification:classes"]}
    zarr_classes = {c["value"]: c for c in item.assets["prediction"].extra_fields["classification:classes"]}
    assert cog_classes[0]["nodata"] and zarr_classes[0]["nodata"]
    # the two encodings name the same classes: palette index i + 1 <-> CLC code
    for i, code in enumerate(CODES, start=1):
        assert cog_classes[i]["name"] == zarr_classes[code]["name"] == f"clc_{code}"
    with rasterio.open(tmp_path / "pred" / "class_map.tif") as src:
        idx = src.read(1)
        cmap = src.colormap(1)
    assert set(np.unique(idx)) <= set(cog_classes)
    for value, cls in cog_classes.items():
        if value:
            assert cls["color_hint"] == "".join(f"{v:02X}" for v in cmap[value][:3])
    asset = item.assets["prediction"]
    pred = xr.open_dataset(tmp_path / "pred" / "prediction.zarr", **asset.extra_fields["xarray:open_kwargs"])
    assert set(np.unique(pred["class_map"].values)) <= set(zarr_classes)
    np.testing.assert_array_equal(np.asarray(CODES)[idx[idx > 0] - 1], pred["class_map"].values[idx > 0])


def test_extension_schema_failure_names_the_file(tmp_path: Path) -> None:
    from landcover.publish import validate_stac_item, write_prediction_item

    cube = make_cube(tmp_path / "c.zarr", shape=(24, 24), classes=CODES, chunks=32, seed=6)
    out = tmp_path / "p" / "prediction.zarr"
    predict_cube(tiny_model(), cube, out=out, window=24, overlap=4, device="cpu", amp=False)
    path = write_prediction_item(tmp_path / "p")
    doc = json.loads(path.read_text())
    assert doc["properties"]["landcover:datetime_source"] == "processing"
    doc["assets"]["prediction"]["classification:classes"][1]["name"] = "not a machine name"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputFileError, match=CLASSIFICATION_URI.replace(".", r"\.")) as err:
        validate_stac_item(path, extension_schemas=SCHEMAS)
    assert str(path) in str(err.value)
