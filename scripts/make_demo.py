"""Build the embedded demo dataset (bench/data/demo/pneumonia-demo) from tests/data/pneumonia.

Whole patients are drawn (seeded) per class until 150 images are reached, so the patient groups
that make the demo's folds honest survive. Images are downscaled 128 -> 64 px (JPEG q90).

    python scripts/make_demo.py tests/data/pneumonia bench/data/demo/pneumonia-demo
"""

from __future__ import annotations

import csv
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

PER_CLASS = 150
SIZE = 64
SEED = 2018

ATTRIBUTION = """# pneumonia-demo: attribution

{n} paediatric chest X-rays ({per_class} NORMAL, {per_class} PNEUMONIA; whole patients; {size}x{size} JPEG)
drawn by scripts/make_demo.py from a 976-image, 128 px copy of the Kermany chest X-ray set (itself
resized from 224x224 squashed images; four exact duplicates removed). `manifest.csv` gives each
image's patient, taken from the file name (personNNN, IM-NNNN, NORMAL2-IM-NNNN).

Source and licence: Kermany D.S., Goldbaum M., et al., "Identifying Medical Diagnoses and Treatable
Diseases by Image-Based Deep Learning", Cell 172(5):1122-1131.e9, 2018,
doi:10.1016/j.cell.2018.02.010. Data: Kermany, Zhang, Goldbaum, "Labeled Optical Coherence
Tomography (OCT) and Chest X-Ray Images for Classification", Mendeley Data v2,
doi:10.17632/rscbjbr9sj.2, licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).
Changes: subset, downscaled, re-encoded.
"""


def main(src: Path, dst: Path) -> None:
    rows = list(csv.DictReader(open(src / "manifest.csv", newline="")))
    by_class: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_class[row["label"]][row["patient"]].append(row)
    if dst.exists():
        shutil.rmtree(dst)
    chosen: list[dict] = []
    rng = random.Random(SEED)
    for label in sorted(by_class):
        patients = sorted(by_class[label])
        rng.shuffle(patients)
        taken = 0
        for patient in patients:
            images = by_class[label][patient]
            if taken + len(images) > PER_CLASS:
                continue
            chosen.extend(images)
            taken += len(images)
            if taken == PER_CLASS:
                break
        assert taken == PER_CLASS, (label, taken)
    for row in chosen:
        out = dst / row["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src / row["path"]) as im:
            im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS).save(out, quality=90)
    with open(dst / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient"])
        for row in sorted(chosen, key=lambda r: r["path"]):
            writer.writerow([row["path"], row["label"], row["patient"]])
    (dst / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(n=len(chosen), per_class=PER_CLASS, size=SIZE))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
