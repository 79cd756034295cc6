"""Extraction: pool every layer's hidden states of a model over a table of (image, prompt) samples.

Image prefix reuse. The prompts of one image share a prefix: the image block and whatever text
all of them start with. For models whose adapter allows it (decoders causal over image tokens), the
prefixes of a batch of images run once, keeping their KV cache, and then every prompt's remaining
tokens run on a copy of that cache. Prompts of an image that go on to share a run of tokens
(the prompts of one template, or a NoCat prompt inside its WithCat one) run that run once, on
the image's cache, and each one's rest on a copy of the cache that ends with it. Other models,
and images whose prompts cannot share a prefix, take the plain path: each batch of (image,
prompt) pairs in one forward pass.

Across tasks. All prompts of an image, whatever their task, are pooled in one job per (model,
part of the images), so they share one vision pass and one prefix pass; each task's tables are
then published apart, and only the tasks whose tables are missing or stale are computed (see
:mod:`~vlprobe.extract.passes`, which says why the jobs are cut this way).

:mod:`~vlprobe.extract.pooling` reduces hidden states inside the forward pass and joins the
reductions of a prefix, a shared run and a suffix; :mod:`~vlprobe.extract.chunks` keeps the
finished chunks of a job, so that a re-run resumes; :mod:`~vlprobe.extract.extractor` runs the
model over the samples and writes the activation tables; :mod:`~vlprobe.extract.passes` is the
extraction job of one model and part, for every task at once.
"""

from vlprobe.extract.chunks import batch_order, chunk_dir_of, plan_chunks
from vlprobe.extract.extractor import Extractor, Variant, extract_activations, extract_variants
from vlprobe.extract.passes import ExtractionJob, TaskPart, run_extraction, write_pass_summary
from vlprobe.extract.pooling import INDEX_POOLING, POOLINGS, LayerPooler, pooling_of

__all__ = [
    "INDEX_POOLING",
    "POOLINGS",
    "ExtractionJob",
    "Extractor",
    "TaskPart",
    "Variant",
    "LayerPooler",
    "batch_order",
    "chunk_dir_of",
    "extract_activations",
    "extract_variants",
    "plan_chunks",
    "pooling_of",
    "run_extraction",
    "write_pass_summary",
]
