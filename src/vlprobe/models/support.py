"""Which image-text-to-text model types of transformers vlprobe cannot probe, and why.

A checkpoint of a type listed in :data:`UNSUPPORTED` fails in :meth:`LoadedVLM.load` before any
weights load, with one line naming the model, its model_type and the reason given here. The
support table ``docs/models.md`` (written by ``docs/models.py`` from a test run) lists every
image-text-to-text type of the installed transformers with these reasons.

vlprobe probes decoder-only models whose decoder reads the image as tokens in its own sequence
(the processor expands an image placeholder into them): each decoder layer's hidden states over
image and prompt tokens are what gets pooled. The reasons below say how a type departs from that.
"""

from __future__ import annotations

ENCODER_DECODER = (
    "encoder-decoder: the image goes through the encoder and the text decoder reads it through "
    "cross-attention, so no decoder layer holds image tokens"
)
CROSS_ATTENTION = (
    "images through cross-attention layers: the decoder's sequence holds no image tokens"
)

UNSUPPORTED: dict[str, str] = {
    "blip": "BLIP's text decoder reads the image through cross-attention; no image tokens",
    "florence2": ENCODER_DECODER + " (BART)",
    "pix2struct": ENCODER_DECODER + " (T5)",
    "pp_formulanet": ENCODER_DECODER,
    "t5gemma2": ENCODER_DECODER + " (T5Gemma 2)",
    "udop": ENCODER_DECODER + " (T5 over document layout)",
    "vision-encoder-decoder": ENCODER_DECODER,
    "mllama": CROSS_ATTENTION + " (Llama 3.2 Vision)",
    "idefics": CROSS_ATTENTION + " (Idefics 1: Flamingo-style gated cross-attention)",
    "evolla": "a protein-text model: its inputs are protein sequences, not images",
    "pi0": (
        "a vision-language-action policy: images and state form a bidirectional prefix for an "
        "action expert, not a text decoder over COCO prompts"
    ),
    "git": (
        "no image token: GIT prepends the image's features to the text's embeddings, with no "
        "placeholder in the text for the processor to expand"
    ),
    "instructblipvideo": (
        "a video model without an image path: its processor always writes the query tokens of "
        "4 frames and its model takes pixels of 4 frames; a still image would have to be posed "
        "as a video of 4 copies (its image checkpoints are served by family instructblip)"
    ),
    "diffusion_gemma": (
        "a block-diffusion decoder: not causal, so layer states of a prompt are not defined as "
        "for a left-to-right decoder"
    ),
}

# Tao et al.'s models that transformers does not have (for the support table)
NOT_IN_TRANSFORMERS: dict[str, str] = {
    "LaVIT": "not in transformers (its own codebase only): cannot be loaded",
    "Emu (original)": (
        "not in transformers (BAAI's own codebase only); its successor Emu3 is (family emu3)"
    ),
}
