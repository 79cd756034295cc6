"""vlprobe: where a vision-language model keeps global versus local meaning, layer by layer."""

__version__ = "0.1.0"
