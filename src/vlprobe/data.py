"""Data acquisition: COCO-format datasets, the demo dataset the project makes, the image split.

Every source ends in the same place: a COCO-format directory (``instances`` and ``captions``
JSON in the official format, images in one folder) and the images table
``results/data/images.parquet`` with columns image_id, split, file_name, width, height, coco_url.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import urllib.parse
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw
from tqdm import tqdm

from vlprobe.download import DownloadError, download
from vlprobe.storage import atomic_path, write_parquet

log = logging.getLogger(__name__)

IMAGES_SCHEMA = {
    "image_id": pl.Int64,
    "split": pl.String,
    "file_name": pl.String,
    "width": pl.Int32,
    "height": pl.Int32,
    "coco_url": pl.String,
}

# The official 80 COCO categories: (id, name, supercategory).
COCO_CATEGORIES: list[tuple[int, str, str]] = [
    (1, "person", "person"),
    (2, "bicycle", "vehicle"),
    (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"),
    (6, "bus", "vehicle"),
    (7, "train", "vehicle"),
    (8, "truck", "vehicle"),
    (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"),
    (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"),
    (15, "bench", "outdoor"),
    (16, "bird", "animal"),
    (17, "cat", "animal"),
    (18, "dog", "animal"),
    (19, "horse", "animal"),
    (20, "sheep", "animal"),
    (21, "cow", "animal"),
    (22, "elephant", "animal"),
    (23, "bear", "animal"),
    (24, "zebra", "animal"),
    (25, "giraffe", "animal"),
    (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"),
    (32, "tie", "accessory"),
    (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"),
    (35, "skis", "sports"),
    (36, "snowboard", "sports"),
    (37, "sports ball", "sports"),
    (38, "kite", "sports"),
    (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"),
    (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"),
    (48, "fork", "kitchen"),
    (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"),
    (52, "banana", "food"),
    (53, "apple", "food"),
    (54, "sandwich", "food"),
    (55, "orange", "food"),
    (56, "broccoli", "food"),
    (57, "carrot", "food"),
    (58, "hot dog", "food"),
    (59, "pizza", "food"),
    (60, "donut", "food"),
    (61, "cake", "food"),
    (62, "chair", "furniture"),
    (63, "couch", "furniture"),
    (64, "potted plant", "furniture"),
    (65, "bed", "furniture"),
    (67, "dining table", "furniture"),
    (70, "toilet", "furniture"),
    (72, "tv", "electronic"),
    (73, "laptop", "electronic"),
    (74, "mouse", "electronic"),
    (75, "remote", "electronic"),
    (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"),
    (79, "oven", "appliance"),
    (80, "toaster", "appliance"),
    (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"),
    (84, "book", "indoor"),
    (85, "clock", "indoor"),
    (86, "vase", "indoor"),
    (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
]


class DataError(ValueError):
    """Bad input data; the message names the file or key at fault."""


@dataclass(frozen=True)
class CocoFiles:
    """Where a COCO-format dataset lives: two annotation files and an image folder."""

    instances: Path
    captions: Path
    images_dir: Path

    @classmethod
    def in_directory(
        cls,
        root: str | os.PathLike,
        instances: str = "annotations/instances.json",
        captions: str = "annotations/captions.json",
        images: str = "images",
    ) -> CocoFiles:
        root = Path(root)
        return cls(root / instances, root / captions, root / images)


# ----------------------------------------------------------------------------- demo dataset

# How each demo category is drawn: (shape, RGB colour). Distinct enough for a model to separate.
_DEMO_LOOKS = {
    "person": ("ellipse", (220, 40, 40)),
    "dog": ("rectangle", (150, 90, 30)),
    "cat": ("triangle", (250, 160, 20)),
    "car": ("rectangle", (30, 60, 220)),
    "bicycle": ("ellipse", (20, 180, 60)),
    "bus": ("triangle", (240, 220, 30)),
    "bird": ("ellipse", (140, 40, 200)),
    "chair": ("triangle", (30, 200, 200)),
}
_DEMO_SCENES = ["on a lawn", "in a street", "in a room", "near the beach", "in a park"]
_DEMO_BACKGROUNDS = [
    (120, 190, 110),
    (170, 170, 170),
    (225, 215, 190),
    (240, 225, 160),
    (90, 160, 90),
]
_DEMO_SIZES = [(128, 96), (96, 128), (128, 128), (112, 84)]
_DEMO_CAPTIONS = [
    "A picture of {objects} {scene}.",
    "There is {objects} {scene}.",
    "{Objects} can be seen {scene}.",
    "A simple drawing showing {objects}.",
    "An image with {objects} {scene}.",
]


def _with_article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _join_names(names: list[str]) -> str:
    phrases = [_with_article(n) for n in names]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: list[int], colour: tuple[int, int, int]):
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def make_demo_coco(
    out_dir: str | os.PathLike,
    n_images: int,
    seed: int,
    categories: list[str] | None = None,
    max_objects: int = 3,
) -> CocoFiles:
    """Generate a small COCO-format dataset of simple scenes with objects of COCO categories.

    Each image shows 1..max_objects objects (a category is drawn as a coloured shape); five
    captions per image name the objects and the scene. Annotations are in the official
    format, with all 80 categories listed so category ids match real COCO.
    """
    names = categories or list(_DEMO_LOOKS)
    unknown = sorted(set(names) - set(_DEMO_LOOKS))
    if unknown:
        raise DataError(
            f"demo categories {unknown} cannot be drawn; choose from {list(_DEMO_LOOKS)}"
        )
    category_ids = {name: cid for cid, name, _ in COCO_CATEGORIES}
    rng = random.Random(seed)
    files = CocoFiles.in_directory(out_dir)
    files.images_dir.mkdir(parents=True, exist_ok=True)
    images, objects, captions = [], [], []
    for index in range(n_images):
        image_id = index + 1
        width, height = rng.choice(_DEMO_SIZES)
        present = rng.sample(names, rng.randint(1, min(max_objects, len(names))))
        image = Image.new("RGB", (width, height), rng.choice(_DEMO_BACKGROUNDS))
        draw = ImageDraw.Draw(image)
        for name in present:
            shape, colour = _DEMO_LOOKS[name]
            w, h = rng.randint(width // 5, width // 2), rng.randint(height // 5, height // 2)
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            _draw(draw, shape, [x, y, x + w, y + h], colour)
            objects.append(
                {
                    "id": len(objects) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[name],
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    "iscrowd": 0,
                }
            )
        file_name = f"{image_id:012d}.jpg"
        with atomic_path(files.images_dir / file_name) as tmp:
            image.save(tmp, format="JPEG", quality=90)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "license": 0,
                "coco_url": None,
            }
        )
        scene = rng.choice(_DEMO_SCENES)
        listed = _join_names(present)
        for template in _DEMO_CAPTIONS:
            text = template.format(objects=listed, Objects=listed.capitalize(), scene=scene)
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
    info = {"description": "vlprobe demo dataset (generated)", "version": "1.0", "seed": seed}
    licenses = [{"id": 0, "name": "generated by vlprobe", "url": ""}]
    all_categories = [{"id": i, "name": n, "supercategory": s} for i, n, s in COCO_CATEGORIES]
    instances = {
        "info": info,
        "licenses": licenses,
        "images": images,
        "annotations": objects,
        "categories": all_categories,
    }
    caption_doc = {"info": info, "licenses": licenses, "images": images, "annotations": captions}
    for path, doc in [(files.instances, instances), (files.captions, caption_doc)]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc))
    return files


# ----------------------------------------------------------------------------- reading COCO


def read_coco_json(path: str | os.PathLike, required: tuple[str, ...]) -> dict:
    """Load a COCO annotation file, failing with one line naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    missing = [key for key in required if key not in doc] if isinstance(doc, dict) else required
    if missing:
        raise DataError(f"{path}: not a COCO annotation file (missing {', '.join(missing)})")
    return doc


def present_categories(instances: dict) -> dict[int, list[str]]:
    """Image id -> sorted names of the categories annotated on it (crowd regions count)."""
    names = {c["id"]: c["name"] for c in instances["categories"]}
    present: dict[int, set[str]] = {image["id"]: set() for image in instances["images"]}
    for ann in instances["annotations"]:
        present.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    return {image_id: sorted(cats) for image_id, cats in present.items()}


def captions_by_image(captions: dict) -> dict[int, list[tuple[int, str]]]:
    """Image id -> [(caption id, caption text)] ordered by caption id."""
    grouped: dict[int, list[tuple[int, str]]] = {}
    for ann in sorted(captions["annotations"], key=lambda a: a["id"]):
        grouped.setdefault(ann["image_id"], []).append((ann["id"], ann["caption"].strip()))
    return grouped


def fitted_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` shrunk, aspect kept, so that its longer side is at most ``max_side`` (None: as
    it is; an image is never enlarged)."""
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_image(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
    """The image at ``path``, decoded to RGB (what every processor is given), its longer side
    at most ``max_side`` (bicubic; the compact-model study's code shrank COCO images to 300)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    size = fitted_size(rgb.size, max_side)
    return rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BICUBIC)


def image_is_readable(path: Path) -> str | None:
    """None if the image decodes fully, else the reason it does not."""
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        return "missing"
    except (OSError, SyntaxError, ValueError) as err:
        return f"cannot decode ({err})"
    return None


SPLITS = ("train", "eval")


def split_sources(files: Mapping[str, str], images_dir: str | os.PathLike) -> dict[str, CocoFiles]:
    """Per split, its COCO files, from ``{split}_instances`` and ``{split}_captions`` entries."""
    return {
        split: CocoFiles(
            Path(files[f"{split}_instances"]), Path(files[f"{split}_captions"]), Path(images_dir)
        )
        for split in SPLITS
    }


def split_files(files: Mapping[str, str], kind: str) -> dict[str, str]:
    """Per split, the ``{split}_<kind>`` entry of a rule's inputs."""
    return {split: files[f"{split}_{kind}"] for split in SPLITS}


def image_url(coco_url: str, base_url: str) -> str:
    """An image's address under ``base_url`` (the site root, or a mirror standing in for it)."""
    return base_url.rstrip("/") + urllib.parse.urlsplit(coco_url).path


def fetch_images(
    records: list[dict], images_dir: Path, base_url: str, workers: int
) -> dict[str, str | None]:
    """Fetch images by their ``coco_url`` under ``base_url`` into ``images_dir``, in parallel.

    Files already complete are kept (a partial one is resumed); each image is decoded to
    verify it. Returns file name -> None if good, else the reason it is not.
    """

    def fetch(record: dict) -> tuple[str, str | None, int]:
        path = images_dir / record["file_name"]
        try:
            download(image_url(record["coco_url"], base_url), path)
        except DownloadError as err:
            return record["file_name"], str(err), 0
        reason = image_is_readable(path)
        if reason is not None:
            path.unlink()  # a corrupt file must not pass as complete next time
            reason = f"{image_url(record['coco_url'], base_url)}: {reason}"
        return record["file_name"], reason, path.stat().st_size if reason is None else 0

    results: dict[str, str | None] = {}
    total_bytes = 0
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(records), unit="img", desc="images", file=sys.stderr) as bar,
    ):
        for file_name, reason, size in pool.map(fetch, records):
            results[file_name] = reason
            total_bytes += size
            bar.set_postfix_str(f"{total_bytes / 1e6:.1f} MB", refresh=False)
            bar.update()
    return results


def _check_images(
    records: list[dict], images_dir: Path, base_url: str | None, workers: int
) -> dict[str, str | None]:
    """Verify images on disk, or fetch and verify them when the source is a web site."""
    if base_url is not None:
        return fetch_images(records, images_dir, base_url, workers)
    return {r["file_name"]: image_is_readable(images_dir / r["file_name"]) for r in records}


def _usable_records(files: CocoFiles) -> dict[int, dict]:
    """Image records of a source that have captions (the caption task needs them)."""
    instances = read_coco_json(files.instances, ("images", "annotations", "categories"))
    captioned = set(captions_by_image(read_coco_json(files.captions, ("images", "annotations"))))
    return {image["id"]: image for image in instances["images"] if image["id"] in captioned}


def build_images_table(
    sources: Mapping[str, CocoFiles],
    n_images: Mapping[str, int],
    seed: int,
    on_bad_image: str,
    base_url: str | None = None,
    workers: int = 8,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Sample each split's images with a seed and verify that every sampled image decodes.

    ``sources`` maps train/eval to their COCO files; splits sharing one source are drawn
    from a single seeded order (train first), so an image is never in both. With
    ``base_url``, images missing from the image folder are fetched from the web first.
    A bad image raises (``on_bad_image='error'``) or is skipped, listed in ``skipped``, and
    replaced by the next image of the seeded order (``'skip'``).
    Returns ``(images, skipped)``.
    """
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"coco.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    groups: dict[CocoFiles, list[str]] = {}
    for split in SPLITS:
        groups.setdefault(sources[split], []).append(split)
    rows, skipped = [], []
    for files, splits in groups.items():
        records = _usable_records(files)
        quota = {split: n_images[split] for split in splits}
        if sum(quota.values()) > len(records):
            keys = " + ".join(f"coco.n_{split}_images" for split in splits)
            raise DataError(
                f"{keys} = {sum(quota.values())} exceeds the {len(records)} captioned images "
                f"of {files.instances}"
            )
        order = [records[int(i)] for i in np.random.default_rng(seed).permutation(sorted(records))]
        cursor = 0
        while sum(quota.values()) > 0 and cursor < len(order):
            batch = order[cursor : cursor + sum(quota.values())]
            cursor += len(batch)
            reasons = _check_images(batch, files.images_dir, base_url, workers)
            for record in batch:
                reason = reasons[record["file_name"]]
                if reason is not None:
                    if on_bad_image == "error":
                        raise DataError(f"{files.images_dir / record['file_name']}: {reason}")
                    log.warning("skipping image %s: %s", record["file_name"], reason)
                    skipped.append((record["id"], record["file_name"], reason))
                    continue
                split = next(s for s in splits if quota[s] > 0)
                quota[split] -= 1
                rows.append(
                    (
                        record["id"],
                        split,
                        record["file_name"],
                        record["width"],
                        record["height"],
                        record.get("coco_url"),
                    )
                )
        if sum(quota.values()) > 0:
            raise DataError(
                f"{files.images_dir}: not enough readable images for {', '.join(splits)} "
                f"({len(skipped)} skipped)"
            )
    images = pl.DataFrame(rows, schema=IMAGES_SCHEMA, orient="row").sort("image_id")
    skipped_frame = pl.DataFrame(
        skipped,
        schema={"image_id": pl.Int64, "file_name": pl.String, "reason": pl.String},
        orient="row",
    )
    return images, skipped_frame


def write_images_table(
    sources: Mapping[str, CocoFiles],
    n_images: Mapping[str, int],
    seed: int,
    on_bad_image: str,
    images_path: str | os.PathLike,
    skipped_path: str | os.PathLike,
    base_url: str | None = None,
    workers: int = 8,
) -> pl.DataFrame:
    """Build the images table and the skipped-images table and write both atomically."""
    images, skipped = build_images_table(sources, n_images, seed, on_bad_image, base_url, workers)
    write_parquet(skipped, skipped_path)
    write_parquet(images, images_path)
    log.info(
        "%s images sampled with seed %d; %d skipped",
        " and ".join(f"{n} {split}" for split, n in n_images.items()),
        seed,
        skipped.height,
    )
    return images


def fetch_annotations(
    base_url: str,
    archive: str,
    size: int,
    md5: str,
    dest_dir: str | os.PathLike,
    members: Mapping[str, str],
) -> None:
    """Download the annotation archive once (resumable, verified) and extract the members.

    ``members`` maps a member path inside the zip to its output file.
    """
    dest_dir = Path(dest_dir)
    zip_path = download(
        f"{base_url.rstrip('/')}/{archive}", dest_dir / Path(archive).name, size=size, md5=md5
    )
    with zipfile.ZipFile(zip_path) as bundle:
        names = set(bundle.namelist())
        for member, out in members.items():
            if member not in names:
                raise DataError(f"{zip_path}: no member {member}")
            with atomic_path(out) as tmp, bundle.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
