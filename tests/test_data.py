import json

import polars as pl
import pytest
from helpers import DEMO_IMAGES, DEMO_SEED, both
from PIL import Image

from vlprobe.baselines import load_blank_image
from vlprobe.data import (
    COCO_CATEGORIES,
    CocoFiles,
    DataError,
    build_images_table,
    load_image,
    make_demo_coco,
    present_categories,
)


@pytest.fixture(scope="module")
def demo(demo_coco) -> CocoFiles:
    return demo_coco


def test_demo_dataset_is_official_coco_format(demo):
    from pycocotools.coco import COCO

    coco = COCO(str(demo.instances))
    assert len(coco.getImgIds()) == DEMO_IMAGES
    assert len(coco.getCatIds()) == 80
    captions = json.loads(demo.captions.read_text())
    per_image = pl.DataFrame(captions["annotations"]).group_by("image_id").len()
    assert per_image["len"].to_list() == [5] * DEMO_IMAGES
    for image in coco.loadImgs(coco.getImgIds()):
        assert (demo.images_dir / image["file_name"]).is_file()
    # captions name exactly the drawn categories
    present = present_categories(json.loads(demo.instances.read_text()))
    first = captions["annotations"][0]
    assert all(name in first["caption"] for name in present[first["image_id"]])


def test_demo_dataset_is_deterministic(tmp_path, demo):
    again = make_demo_coco(tmp_path, n_images=DEMO_IMAGES, seed=DEMO_SEED)
    assert again.instances.read_text() == demo.instances.read_text()
    assert again.captions.read_text() == demo.captions.read_text()


def test_split_is_disjoint_seeded_and_sized(demo):
    images, skipped = build_images_table(both(demo), {"train": 16, "eval": 6}, 1, "error")
    assert images.filter(pl.col("split") == "train").height == 16
    assert images.filter(pl.col("split") == "eval").height == 6
    assert images["image_id"].n_unique() == images.height
    assert skipped.height == 0
    again, _ = build_images_table(both(demo), {"train": 16, "eval": 6}, 1, "error")
    assert again.equals(images)
    other, _ = build_images_table(both(demo), {"train": 16, "eval": 6}, 2, "error")
    assert not other.equals(images)


def test_too_many_images_names_the_keys(demo):
    with pytest.raises(DataError, match="coco.n_train_images"):
        build_images_table(both(demo), {"train": DEMO_IMAGES - 9, "eval": 10}, 0, "error")


def test_bad_image_error_or_skip(tmp_path):
    files = make_demo_coco(tmp_path, n_images=10, seed=0)
    broken = files.images_dir / "000000000004.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(DataError, match="000000000004.jpg"):
        build_images_table(both(files), {"train": 7, "eval": 3}, 0, "error")
    (files.images_dir / "000000000004.jpg").unlink()
    images, skipped = build_images_table(both(files), {"train": 6, "eval": 3}, 0, "skip")
    assert skipped["file_name"].to_list() == ["000000000004.jpg"]
    assert skipped["reason"].to_list() == ["missing"]
    assert 4 not in images["image_id"].to_list()
    assert images.height == 9


def test_not_coco_json_names_the_file(tmp_path):
    files = make_demo_coco(tmp_path, n_images=4, seed=0)
    files.instances.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"instances\.json.*annotations"):
        build_images_table(both(files), {"train": 2, "eval": 1}, 0, "error")


def test_real_coco_sample(coco_mini):
    files = CocoFiles.in_directory(coco_mini)
    images, _ = build_images_table(both(files), {"train": 80, "eval": 40}, 0, "error")
    assert images.height == 120
    assert set(images["split"]) == {"train", "eval"}
    assert images["coco_url"].str.starts_with("http://images.cocodataset.org/").all()
    assert {name for _, name, _ in COCO_CATEGORIES} == {
        c["name"] for c in json.loads(files.instances.read_text())["categories"]
    }


def test_load_image_shrinks_to_max_side_keeping_the_aspect(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (640, 427), (10, 20, 30)).save(path)
    assert load_image(path).size == (640, 427)
    assert load_image(path, 300).size == (300, 200)
    assert load_image(path, 1000).size == (640, 427)  # never enlarged
    assert load_blank_image(path, 300).size == (300, 200)  # the blank baseline: the same size
    tall = tmp_path / "tall.png"
    Image.new("L", (200, 500)).save(tall)
    shrunk = load_image(tall, 100)
    assert shrunk.size == (40, 100) and shrunk.mode == "RGB"
