"""Acquisition from a web site: a loopback server lays out the COCO sample like the real one."""

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from vlprobe.data import DataError, build_images_table, fetch_annotations, split_sources
from vlprobe.download import DownloadError, download


class Site:
    """Files by URL path, with faults injected per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()  # send half the body, then close
        self.fail_once: set[str] = set()  # answer 500 once
        self.requests: list[tuple[str, str | None]] = []


def make_handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            site.requests.append((self.path, self.headers.get("Range")))
            if self.path in site.fail_once:
                site.fail_once.discard(self.path)
                self.send_error(500)
                return
            body = site.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if rng := self.headers.get("Range"):
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if self.path in site.drop_once:
                site.drop_once.discard(self.path)
                self.wfile.write(body[start : start + (len(body) - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    return Handler


@pytest.fixture
def site():
    site = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield site
    server.shutdown()
    server.server_close()


def test_dropped_connection_resumes_byte_identical(site, tmp_path):
    body = bytes(range(256)) * 4000
    site.files["/big.bin"] = body
    site.drop_once.add("/big.bin")
    path = download(
        f"{site.url}/big.bin",
        tmp_path / "big.bin",
        size=len(body),
        md5=hashlib.md5(body).hexdigest(),
        backoff=0.01,
    )
    assert path.read_bytes() == body
    assert [r for p, r in site.requests] == [None, f"bytes={len(body) // 2}-"]
    # complete files are not fetched again
    download(f"{site.url}/big.bin", tmp_path / "big.bin", size=len(body))
    assert len(site.requests) == 2


def test_server_error_is_retried_and_404_fails_at_once(site, tmp_path):
    site.files["/a.txt"] = b"hello"
    site.fail_once.add("/a.txt")
    assert download(f"{site.url}/a.txt", tmp_path / "a.txt", backoff=0.01).read_bytes() == b"hello"
    with pytest.raises(DownloadError, match=r"/missing\.txt: HTTP 404"):
        download(f"{site.url}/missing.txt", tmp_path / "missing.txt", backoff=0.01)
    assert not (tmp_path / "missing.txt").exists()
    assert sum(p == "/missing.txt" for p, _ in site.requests) == 1


def test_checksum_mismatch_names_the_url(site, tmp_path):
    site.files["/a.zip"] = b"not the archive"
    with pytest.raises(DownloadError, match=r"a\.zip: downloaded file has md5"):
        download(f"{site.url}/a.zip", tmp_path / "a.zip", md5="0" * 32)
    assert not list(tmp_path.iterdir())


def serve_coco_mini(site: Site, coco_mini: Path) -> dict:
    """Lay coco-mini out like images.cocodataset.org: an annotation zip and per-split folders."""
    instances = json.loads((coco_mini / "annotations/instances.json").read_text())
    captions = json.loads((coco_mini / "annotations/captions.json").read_text())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for split in ("train2017", "val2017"):
            ids = {i["id"] for i in instances["images"] if f"/{split}/" in i["coco_url"]}
            for name, doc in (("instances", instances), ("captions", captions)):
                part = {
                    **doc,
                    "images": [i for i in doc["images"] if i["id"] in ids],
                    "annotations": [a for a in doc["annotations"] if a["image_id"] in ids],
                }
                bundle.writestr(f"annotations/{name}_{split}.json", json.dumps(part))
    body = archive.getvalue()
    site.files["/annotations/annotations_trainval2017.zip"] = body
    for image in instances["images"]:
        path = "/" + image["coco_url"].split("/", 3)[3]
        site.files[path] = (coco_mini / "images" / image["file_name"]).read_bytes()
    return {
        "path": "annotations/annotations_trainval2017.zip",
        "size": len(body),
        "md5": hashlib.md5(body).hexdigest(),
    }


def fetch_study(site, tmp_path, archive, on_bad_image, n_train=30, n_eval=20):
    ann = tmp_path / "coco" / "annotations"
    members = {
        f"annotations/{k}_{s}.json": ann / f"{k}_{s}.json"
        for k in ("instances", "captions")
        for s in ("train2017", "val2017")
    }
    fetch_annotations(site.url, archive["path"], archive["size"], archive["md5"], ann, members)
    files = {
        f"{split}_{kind}": str(ann / f"{kind}_{name}.json")
        for split, name in (("train", "train2017"), ("eval", "val2017"))
        for kind in ("instances", "captions")
    }
    sources = split_sources(files, tmp_path / "coco" / "images")
    return build_images_table(
        sources, {"train": n_train, "eval": n_eval}, 0, on_bad_image, base_url=site.url, workers=4
    )


def test_study_images_fetched_with_faults(site, tmp_path, coco_mini):
    archive = serve_coco_mini(site, coco_mini)
    zip_path = "/annotations/annotations_trainval2017.zip"
    site.drop_once.add(zip_path)
    good, _ = fetch_study(site, tmp_path / "clean", archive, "error")
    assert [r is not None for p, r in site.requests if p == zip_path] == [False, True]
    train_urls = good.filter(pl.col("split") == "train")["coco_url"]
    eval_urls = good.filter(pl.col("split") == "eval")["coco_url"]
    assert (
        train_urls.str.contains("/train2017/").all() and eval_urls.str.contains("/val2017/").all()
    )
    # inject faults into three sampled images: a 404, a truncated JPEG, a 500 then success
    paths = ["/" + url.split("/", 3)[3] for url in good["coco_url"]]
    missing, truncated, flaky = paths[0], paths[1], paths[2]
    del site.files[missing]
    site.files[truncated] = site.files[truncated][:3000]
    site.fail_once.add(flaky)
    with pytest.raises(DataError, match=r"(HTTP 404|cannot decode)"):
        fetch_study(site, tmp_path / "strict", archive, "error")
    site.fail_once.add(flaky)
    images, skipped = fetch_study(site, tmp_path / "skip", archive, "skip")
    assert sorted(skipped["file_name"]) == sorted(Path(p).name for p in (missing, truncated))
    assert skipped.filter(pl.col("file_name") == Path(missing).name)["reason"][0].endswith(
        "HTTP 404 Not Found"
    )
    assert images.height == good.height  # replaced by the next images of the seeded order
    assert not set(skipped["image_id"]) & set(images["image_id"])
    stored = tmp_path / "skip" / "coco" / "images"
    assert sorted(p.name for p in stored.iterdir()) == sorted(images["file_name"])
    # a rerun fetches nothing that is already complete
    before = len(site.requests)
    again, _ = fetch_study(site, tmp_path / "skip", archive, "skip")
    assert again.equals(images)
    fetched = [p for p, _ in site.requests[before:] if p.endswith(".jpg")]
    assert sorted(Path(p).name for p in fetched) == sorted(skipped["file_name"])
