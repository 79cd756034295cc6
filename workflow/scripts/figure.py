"""Draw one figure from the summary or the probe tables as HTML, PNG and SVG."""

from vlprobe.figures import figure_frame, save_chart
from vlprobe.joblog import job_log
from vlprobe.settings import FIGURES

with job_log(snakemake.log[0]):
    figure = FIGURES[snakemake.wildcards.figure]
    chart = figure(figure_frame(figure, snakemake.input), **snakemake.params.style)
    save_chart(chart, snakemake.output.html, snakemake.output.png, snakemake.output.svg)
