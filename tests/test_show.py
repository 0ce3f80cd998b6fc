"""fastfeat show: activation-map grids and 2-D embeddings as valid PNGs, through the real parser."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from fastfeat.cli import main  # noqa: E402
from fastfeat.probes.show import pooled, show  # noqa: E402
from fastfeat.store import StoreWriter, open_store  # noqa: E402

from _probe_data import clusters  # noqa: E402


@pytest.fixture(scope="module")
def map_store(tmp_path_factory):
    """30 images of (6, 5, 4) maps (3 classes) plus their pooled (4,) vectors."""
    X, y = clusters(10, 3, 6 * 5 * 4, separation=2.0, seed=2, shape=(6, 5, 4))
    path = str(tmp_path_factory.mktemp("show") / "maps.h5")
    w = StoreWriter(path, {"conv": ((6, 5, 4), "float32"), "conv:avg": ((4,), "float32")}, capacity=len(X),
                    class_names=["a", "b", "c"], meta={"model": "synthetic"}, mode="overwrite")  # fmt: skip
    w.append({"conv": X, "conv:avg": X.mean(axis=(1, 2))}, y, [f"{'abc'[k]}/img_{i}.png" for i, k in enumerate(y)],
             np.arange(len(X)))  # fmt: skip
    w.close(complete=True)
    return path


def assert_png(path, min_size=50):
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_size
        im.verify()


def test_show_cli_writes_activation_grid_and_pca(map_store, tmp_path, capsys):
    assert main(["show", map_store, "--layer", "conv", "-o", str(tmp_path), "--image", "3"]) == 0
    written = [line.split("wrote ")[1] for line in capsys.readouterr().out.splitlines() if "wrote" in line]
    assert [p.rsplit("/", 1)[1] for p in written] == ["activations_conv_row3.png", "embedding_pca_conv.png"]
    for p in written:
        assert_png(p)


def test_show_image_path_selects_its_row(map_store, tmp_path):
    with open_store(map_store) as s:
        target = s.paths[7]
    (path,) = show(map_store, "conv", tmp_path, image=target, method=None, channels=[0, 3])
    assert path.endswith("activations_conv_row7.png")
    assert_png(path)


def test_tsne_embedding_of_pooled_vectors(map_store, tmp_path):
    (path,) = show(map_store, "conv:avg", tmp_path, method="tsne")  # a vector layer: no activation maps
    assert path.endswith("embedding_tsne_conv_avg.png")
    assert_png(path)


def test_pooled_averages_feature_maps_over_space(map_store):
    with open_store(map_store) as s:
        rows = np.arange(len(s))
        np.testing.assert_allclose(pooled(s, "conv", rows), np.asarray(s.features("conv:avg")), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layer": "conv:avg", "activation_maps": True}, "H, W, C"),
        ({"layer": "conv", "channels": [9]}, "channels"),
        ({"layer": "conv", "image": 99}, "image"),
        ({"layer": "conv", "image": "x/none.png"}, "image"),
        ({"layer": "conv", "method": "umap", "activation_maps": False}, "method"),
    ],
)
def test_bad_arguments_name_themselves(map_store, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        show(map_store, output_dir=tmp_path, **kwargs)
    assert "Received" in str(e.value)


def test_cli_channels_and_errors(map_store, tmp_path, capsys):
    assert main(["show", map_store, "--layer", "conv", "-o", str(tmp_path), "--channels", "0-1,3",
                 "--embedding", "none"]) == 0  # fmt: skip
    assert main(["show", map_store, "--layer", "conv", "-o", str(tmp_path), "--channels", "9"]) == 2
    assert "channels" in capsys.readouterr().err


def test_unknown_layer_is_a_usage_error(map_store, tmp_path, capsys):
    assert main(["show", map_store, "--layer", "nope", "-o", str(tmp_path)]) == 2
    assert main(["probe", map_store, "--layer", "nope", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "conv:avg" in err and "Traceback" not in err
