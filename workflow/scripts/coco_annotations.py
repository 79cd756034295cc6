"""Download the COCO annotation archive once and extract the captions and instances files."""

from pathlib import Path

from vlprobe.data import fetch_annotations
from vlprobe.joblog import job_log

with job_log(snakemake.log[0]):
    archive = snakemake.params.annotations
    members = {f"annotations/{Path(path).name}": path for path in snakemake.output}
    fetch_annotations(
        snakemake.params.base_url,
        archive["path"],
        archive["size"],
        archive["md5"],
        Path(snakemake.output[0]).parent,
        members,
    )
