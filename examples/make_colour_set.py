"""Regenerate ``examples/colour/``: a small colour photo set for ``train.colorizer``.

Square crops of scikit-image's bundled colour photos (astronaut and rocket: public domain;
coffee and chelsea: CC0; see make_samples.py), 128 x 128 JPEGs: 12 training crops per photo from
its left three quarters (``train/``) and 3 validation crops per photo from its right quarter
(``val/``), so no validation pixel was seen in training. Deterministic: running it again writes
the same pictures. Run: ``uv run python examples/make_colour_set.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from imgflow_colorize.colour_sets import write_photo_set

HERE = Path(__file__).resolve().parent


def main() -> None:
    folder = HERE / "colour"
    if folder.exists():
        shutil.rmtree(folder)
    written = write_photo_set(folder, train_per_photo=12, val_per_photo=3, size=128, seed=0)
    size = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} pictures ({size / 1024:.0f} KB) under {folder}")


if __name__ == "__main__":
    main()
