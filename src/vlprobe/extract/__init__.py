"""Extraction: pool every layer's hidden states of a model over a table of (image, prompt) samples.

Image prefix reuse. The prompts of one image share a prefix: the image block and whatever text
all of them start with. For models whose adapter allows it (decoders causal over image tokens), the
prefixes of a batch of images run once, keeping their KV cache, and then every prompt's remaining
tokens run on a copy of that cache. Other models, and images whose prompts cannot share a
prefix, take the plain path: each batch of (image, prompt) pairs in one forward pass.

:mod:`~vlprobe.extract.pooling` reduces hidden states inside the forward pass and joins the
reductions of a prefix and a suffix; :mod:`~vlprobe.extract.chunks` keeps the finished chunks
of a job, so that a re-run resumes; :mod:`~vlprobe.extract.extractor` runs the model over the
samples and writes the activation tables.
"""

from vlprobe.extract.chunks import batch_order, chunk_dir_of, plan_chunks
from vlprobe.extract.extractor import Extractor, extract_activations, run_extraction
from vlprobe.extract.pooling import INDEX_POOLING, POOLINGS, LayerPooler, pooling_of

__all__ = [
    "INDEX_POOLING",
    "POOLINGS",
    "Extractor",
    "LayerPooler",
    "batch_order",
    "chunk_dir_of",
    "extract_activations",
    "plan_chunks",
    "pooling_of",
    "run_extraction",
]
