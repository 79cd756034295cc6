"""Generate the demo's COCO-format dataset."""

from pathlib import Path

from vlprobe.data import make_demo_coco
from vlprobe.joblog import job_log

with job_log(snakemake.log[0]):
    demo = snakemake.params.demo
    make_demo_coco(Path(snakemake.output.instances).parents[1], demo["n_images"], demo["seed"])
