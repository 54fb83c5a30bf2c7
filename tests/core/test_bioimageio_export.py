"""BioImage.IO export of a BLO-adapted model: the package passes bioimageio.core's own model test, gives
``segment_automatic``'s probabilities (grey, RGB, with LoRA), records the training provenance, and ``samtune export``
writes it."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import yaml

# A module, not its functions: pytest would collect bioimageio.core's ``test_model`` as a test of this file.
bioimageio_core = pytest.importorskip(
    "bioimageio.core", reason="BioImage.IO export is tested with the optional extra [bioimageio]"
)

from napari_samtune.cli import main  # noqa: E402
from napari_samtune.core.automatic import segment_automatic  # noqa: E402
from napari_samtune.core.embeddings import EmbeddingStore  # noqa: E402
from napari_samtune.core.export.bioimageio import BLO_CITATION, SAM_CITATION, ExportError, export_bioimageio  # noqa: E402
from napari_samtune.core.image import as_volume  # noqa: E402
from napari_samtune.core.jobs import drive  # noqa: E402
from napari_samtune.core.training.adapters import Adapter, apply_adapter, load_adapter, save_adapter  # noqa: E402
from napari_samtune.core.training.blo import BLOSettings  # noqa: E402
from napari_samtune.core.training.data import prepare_training_data  # noqa: E402
from napari_samtune.core.training.fine_tune import fine_tune  # noqa: E402
from napari_samtune.core.training.loop import TrainConfig  # noqa: E402
from napari_samtune.core.training.lora import LoraSettings  # noqa: E402

from .conftest import TINY, disc_images, make_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def discs(n: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` grey images of bright discs (class 1) and dimmer ones (class 2) with their label images."""
    return disc_images(n, size, seed, radius_divisors=(6, 4), levels=(0.1, 0.9, 0.5), scale=1000)


def train_blo(folder, settings: BLOSettings) -> Adapter:
    """A BLO adapter of the tiny model after two training steps, through its file as a user would have it."""
    data = prepare_training_data(*discs(4, TINY.img_size), task="semantic", all_objects_labeled=True)
    config = TrainConfig(steps=2, validate_every=1, time_budget_s=30)
    result = drive(fine_tune(make_model(), data, "blo", settings, config, cache_root=False))
    return load_adapter(save_adapter(result.adapter, folder / "discs.samtune"))


@pytest.fixture(scope="module")
def blo_adapter(tmp_path_factory) -> Adapter:
    return train_blo(tmp_path_factory.mktemp("adapter"), BLOSettings(n_tokens=2))


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory) -> Adapter:
    """BLO whose lower level also trains LoRA weights in the image encoder."""
    return train_blo(tmp_path_factory.mktemp("lora"), BLOSettings(n_tokens=2, lora=LoraSettings()))


def test_package_passes_bioimageio_model_test_and_records_provenance(blo_adapter, tmp_path):
    exported = export_bioimageio(make_model(), blo_adapter, tmp_path / "discs.zip")
    assert exported.path.is_file() and exported.size_bytes == exported.path.stat().st_size
    assert exported.input_size == TINY.img_size and exported.classes == (1, 2)

    summary = bioimageio_core.test_model(exported.path, devices=["cpu"])
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed

    with zipfile.ZipFile(exported.path) as package:
        assert {"rdf.yaml", "weights_torchscript.pt", "test_input.npy", "test_output.npy", "README.md"} <= set(
            package.namelist()
        )
        rdf = yaml.safe_load(package.read("rdf.yaml"))
    provenance = rdf["config"]["samtune"]
    assert provenance["base_model"] == "tiny" and provenance["base_sha256"] == make_model().weights_sha256
    assert provenance["method"] == "blo" and provenance["train_config"]["time_budget_s"] == 30
    assert provenance["data_summary"]["images"] == 4 and provenance["classes"] == [1, 2]
    assert provenance["metrics"]["best_validation"] == blo_adapter.metrics["best_validation"]
    assert [c["doi"] for c in rdf["cite"]] == [SAM_CITATION[1], BLO_CITATION[1]]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize(("rgb", "adapter"), [(False, "blo_adapter"), (True, "blo_adapter"), (False, "lora_adapter")])
def test_package_output_equals_segment_automatic(request, tmp_path, rgb, adapter):
    blo_adapter = request.getfixturevalue(adapter)
    image = discs(1, 80, seed=3)[0][0]  # larger than the input: the package's test image is its centre crop
    if rgb:
        image = np.stack([image, 0.5 * image, 1000 - 0.2 * image], -1)
    exported = export_bioimageio(make_model(), blo_adapter, tmp_path / "discs.zip", test_image=image, rgb=rgb)
    with zipfile.ZipFile(exported.path) as package:
        package.extract("test_input.npy", tmp_path)
    raw = np.load(tmp_path / "test_input.npy")
    assert raw.shape == (1, 3 if rgb else 1, 64, 64)

    descr = bioimageio_core.load_model_description(exported.path)
    sample = bioimageio_core.predict(model=descr, inputs={"raw": raw})
    probabilities = sample.members["probabilities"].data.to_numpy()[0]

    plane = raw[0].transpose(1, 2, 0) if rgb else raw[0, 0]
    model = apply_adapter(make_model(), blo_adapter)
    embedding = EmbeddingStore(model, as_volume(plane, rgb=rgb), cache_root=False).plane(0)
    expected = segment_automatic(model, embedding).probabilities
    assert probabilities.shape == expected.shape == (3, 64, 64)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_only_blo_adapters_and_usable_test_images_export(blo_adapter, tmp_path):
    no_prompts = Adapter(**{**vars(blo_adapter), "method": "interactive", "prompt_embeddings": None, "classes": []})
    with pytest.raises(ExportError, match=r"no learned prompts.*method 'blo'"):
        export_bioimageio(make_model(), no_prompts, tmp_path / "x.zip")
    with pytest.raises(ExportError, match="smaller than the model input 64 x 64"):
        export_bioimageio(make_model(), blo_adapter, tmp_path / "x.zip", test_image=np.zeros((32, 80)))
    with pytest.raises(ExportError, match="an RGB model needs an RGB test image"):
        export_bioimageio(make_model(), blo_adapter, tmp_path / "x.zip", test_image=np.zeros((64, 64)), rgb=True)
    assert not list(tmp_path.iterdir())


def test_samtune_export_command(blo_adapter, tmp_path, monkeypatch, capsys):
    adapter_path = save_adapter(blo_adapter, tmp_path / "discs.samtune")
    out = tmp_path / "out" / "discs.zip"
    assert main(["export", str(adapter_path), "--bioimageio", str(out)]) == 2  # 'tiny' is no model name
    assert "give that file with --checkpoint" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr("napari_samtune.cli.export.load_base_model", lambda args, adapter: make_model())
    assert main(["export", str(adapter_path), "--bioimageio", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["export", str(adapter_path), "--bioimageio", str(out)]) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(adapter_path), "--bioimageio", str(tmp_path / "discs.txt")]) == 2
    assert ".zip" in capsys.readouterr().err
    torch.save({"not": "an adapter"}, tmp_path / "bad.samtune")
    assert main(["export", str(tmp_path / "bad.samtune"), "--bioimageio", str(tmp_path / "bad.zip")]) == 2
