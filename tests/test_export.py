"""Sample grids and exports: valid PNGs, webdataset shards, ImageFolder trees, the CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from d3fmt.cli import main
from d3fmt.errors import ConfigError, FormatError
from d3fmt.loader.dataset import D3Dataset
from d3fmt.loader.export import MEAN_BORDER, SAMPLE_BORDER, export_samples, parse_classes, sample_grid


def _expected_uint8(d3_file, per_class, **kw):
    ds = D3Dataset(d3_file, samples_per_class=per_class, **kw)
    x = torch.stack([img for img, _ in ds.__getitems__(range(len(ds)))])  # [N, C, H, W]
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [N, H, W, C]


def test_grid_is_a_png_of_the_expected_size(d3_file, tmp_path):
    out = tmp_path / "grid.png"
    info = sample_grid(d3_file, out, columns=5, classes=[2, 0], scale=3, border=2)
    cell = 8 * 3 + 2 * 2
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (5 * cell, 2 * cell) and img.mode == "RGB"
        px = np.asarray(img)
    assert (info.width, info.height, info.classes) == (5 * cell, 2 * cell, [2, 0])
    # Latents per class = 2: the first two cells of a row are framed as prior means.
    assert tuple(px[0, 0]) == MEAN_BORDER and tuple(px[0, cell]) == MEAN_BORDER
    assert tuple(px[0, 2 * cell]) == SAMPLE_BORDER
    # Row 0 is class 2; its third cell is slot 2 of class 2 (a noise draw, include_means on).
    want = _expected_uint8(d3_file, 5, classes=[2], include_means=True)[2, ..., 0]
    got = px[2 : 2 + 24 : 3, 2 * cell + 2 : 2 * cell + 2 + 24 : 3, 0]
    assert np.array_equal(got, want)



def test_grid_with_few_columns_still_shows_noise_draws(d3_file, tmp_path):
    # L = 2 prior means but only 2 columns: at most columns // 2 = 1 mean, then a draw.
    out = tmp_path / "narrow.png"
    sample_grid(d3_file, out, columns=2, classes=[1], scale=3, border=2)
    cell = 8 * 3 + 2 * 2
    with Image.open(out) as img:
        px = np.asarray(img)
    assert px.shape[:2] == (cell, 2 * cell)
    assert tuple(px[0, 0]) == MEAN_BORDER and tuple(px[0, cell]) == SAMPLE_BORDER
    # The second cell is the first noise draw, slot L = 2 of the class.
    want = _expected_uint8(d3_file, 3, classes=[1], include_means=True)[2, ..., 0]
    got = px[2 : 2 + 24 : 3, cell + 2 : cell + 2 + 24 : 3, 0]
    assert np.array_equal(got, want)

def test_grid_cli(d3_file, tmp_path):
    out = tmp_path / "g.png"
    result = CliRunner().invoke(main, ["sample", str(d3_file), "-o", str(out), "-n", "3", "--classes", "1,3"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        cell = 8 * 6 + 4  # default scale round(48 / 8) = 6, border 2
        assert img.size == (3 * cell, 2 * cell)


def test_webdataset_export_reads_back_with_webdataset(d3_file, tmp_path):
    import webdataset as wds

    out = tmp_path / "wds"
    info = export_samples(d3_file, out, format="webdataset", samples_per_class=3, shard_size=5, progress=False)
    assert info.count == 12 and info.soft and info.files == [f"shard-{i:06d}.tar" for i in range(3)]
    urls = [str(out / name) for name in info.files]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    assert len(samples) == 12
    want = _expected_uint8(d3_file, 3)
    soft = np.load(out / "soft_labels.npy", allow_pickle=False)
    assert soft.shape == (12, 4) and soft.dtype == np.float32
    for i, s in enumerate(samples):
        assert int(s["cls"]) == i // 3
        assert np.array_equal(s["png"], want[i, ..., 0])
        assert np.allclose(s["soft.json"], soft[i], atol=1e-6)
    index = json.loads((out / "labels.json").read_text())
    assert index["labels"] == [i // 3 for i in range(12)] and index["shards"] == info.files


def test_folder_export_reads_back_with_pillow(d3_file, tmp_path):
    out = tmp_path / "folder"
    info = export_samples(d3_file, out, format="folder", samples_per_class=2, classes=[3, 1], progress=False)
    assert info.count == 4
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["0001_class1", "0003_class3"]
    index = json.loads((out / "labels.json").read_text())
    assert index["files"][0] == "0003_class3/000000.png" and index["labels"] == [3, 3, 1, 1]
    want = _expected_uint8(d3_file, 2, classes=[3, 1])
    for k, rel in enumerate(index["files"]):
        with Image.open(out / rel) as img:
            assert img.mode == "L" and img.size == (8, 8)
            assert np.array_equal(np.asarray(img), want[k, ..., 0])


def test_export_is_deterministic_and_hard_label_option(d3_file, tmp_path):
    a = export_samples(d3_file, tmp_path / "a", format="webdataset", samples_per_class=2, progress=False)
    b = export_samples(d3_file, tmp_path / "b", format="webdataset", samples_per_class=2, progress=False)
    assert (tmp_path / "a" / a.files[0]).read_bytes() == (tmp_path / "b" / b.files[0]).read_bytes()
    hard = export_samples(d3_file, tmp_path / "h", format="folder", samples_per_class=1, soft=False, progress=False)
    assert not hard.soft and not (tmp_path / "h" / "soft_labels.npy").exists()


def test_export_refuses_a_non_empty_output_without_force(d3_file, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--force"):
        export_samples(d3_file, out, format="folder", samples_per_class=1, progress=False)
    info = export_samples(d3_file, out, format="folder", samples_per_class=1, force=True, progress=False)
    assert info.count == 4 and (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError):
        export_samples(d3_file, tmp_path / "x", format="zip", progress=False)


def test_export_cli_and_its_errors(d3_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    ok = runner.invoke(main, ["export", str(d3_file), "--format", "webdataset", "-o", str(out), "-n", "2", "-q"])
    assert ok.exit_code == 0, ok.output
    assert "wrote 8 images" in ok.output and (out / "shard-000000.tar").exists()
    again = runner.invoke(main, ["export", str(d3_file), "--format", "webdataset", "-o", str(out), "-n", "2", "-q"])
    assert again.exit_code == ConfigError.exit_code and "Error:" in again.output and "Traceback" not in again.output
    bad = tmp_path / "bad.d3"
    bad.write_bytes(b"\0" * 64)
    broken = runner.invoke(main, ["export", str(bad), "--format", "folder", "-o", str(tmp_path / "o")])
    assert broken.exit_code == FormatError.exit_code and broken.output.startswith("Error:")


def test_parse_classes():
    assert parse_classes("0, 3,5") == [0, 3, 5] and parse_classes(None) is None and parse_classes("") is None
    with pytest.raises(ConfigError):
        parse_classes("a,b")
