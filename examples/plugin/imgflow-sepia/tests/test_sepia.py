"""The plugin's own tests: the stage against imgflow's test kit, and a pipeline run from Python."""

from pathlib import Path

import imgflow
from imgflow.testing import check_stage, make_batch, write_images
from imgflow_sepia import Sepia


def test_sepia_keeps_sizes_and_tints():
    out = check_stage(Sepia, {"strength": 1.0}, make_batch([(32, 48), (20, 20)]))
    assert out.items[1].image.shape == (3, 20, 20)
    red, green, blue = out.items[0].image.mean(dim=(1, 2)).tolist()
    assert red > green > blue  # sepia is warm


def test_a_pipeline_with_the_stage_runs(tmp_path: Path):
    write_images(tmp_path / "in", 2, size=(24, 32))
    (tmp_path / "sepia.toml").write_text(
        '[input]\npath = "in"\n[output]\npath = "out"\nformat = "png"\n'
        '[[stages]]\nuse = "sepia"\nstrength = 0.5\n')
    result = imgflow.run_pipeline(tmp_path / "sepia.toml", workers=1)
    assert result.exit_code == 0, result.failures
    assert result.counts["done"] == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img0000.png", "img0001.png"]
