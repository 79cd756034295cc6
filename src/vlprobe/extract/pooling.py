"""Pooling: reduce each chosen hidden state of a forward pass to one vector per sequence.

Pooling happens inside the forward pass. A forward-pre-hook on decoder layer ``i`` sees hidden
state ``i`` (its input) and a forward hook on the final norm sees hidden state ``num_layers``;
each hook reduces its [batch, tokens, hidden] tensor to [batch, hidden] at once, so token-level
hidden states of all layers never exist together. Hidden-state indices are those of
``output_hidden_states=True``: 0 is the decoder input (image features scattered in), the last
is the output of the final norm.

A sequence run in two passes, an image prefix and then a prompt suffix on the prefix's KV
cache, is pooled exactly: each pass reduces its own tokens (sums, maxima, first or last token)
and each pooling's :attr:`Pooling.combine` joins the parts: mean = (prefix sum + suffix sum) /
(prefix tokens + suffix tokens), max = the larger of both maxima, first = the prefix's first
token, last = the suffix's last token, ``index:N`` = token N of whichever part holds it. A
suffix that is itself run in two passes (a run of tokens shared with other prompts, then its
own rest) first joins its two runs (:func:`join_runs`: sums add, maxima take the larger, the
last token is the rest's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import BatchFeature

from vlprobe.models import LoadedVLM


@dataclass(frozen=True)
class TokenMask:
    """Which positions of a padded batch hold tokens, and where each sequence starts and ends;
    which of them hold image features; and, per ``index:N`` pooling, the (row, position) pairs
    whose hidden states it gathers."""

    mask: torch.Tensor  # [batch, seq] bool
    first: torch.Tensor  # [batch] index of the first token
    last: torch.Tensor  # [batch] index of the last token
    count: torch.Tensor  # [batch, 1] float32 number of tokens
    rows: torch.Tensor  # [batch] arange, for gathering one position per row
    image: torch.Tensor  # [batch, seq] bool: tokens that hold image features
    picks: Mapping[int, tuple[torch.Tensor, torch.Tensor]]  # N -> (rows, positions)

    @classmethod
    def from_attention_mask(
        cls,
        attention_mask: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        picks: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> TokenMask:
        mask = attention_mask.bool()
        as_int = mask.int()
        # argmax returns the first maximal index: the first token, or (flipped) the last one;
        # this holds for left and right padding alike
        first = as_int.argmax(dim=1)
        last = mask.shape[1] - 1 - as_int.flip(dims=[1]).argmax(dim=1)
        count = as_int.sum(dim=1, keepdim=True).float()
        rows = torch.arange(mask.shape[0], device=mask.device)
        image = torch.zeros_like(mask) if image_mask is None else mask & image_mask.bool()
        return cls(mask, first, last, count, rows, image, dict(picks or {}))

    def counts(self) -> dict[str, torch.Tensor]:
        """Tokens per row [batch, 1] float32: all of them, image ones, text ones."""
        image = self.image.sum(dim=1, keepdim=True).float()
        return {"all": self.count, "image": image, "text": self.count - image}


def index_positions(index: int, lengths: torch.Tensor, model_name: str) -> torch.Tensor:
    """Position of token ``index`` (negative: counted from the end) in sequences of ``lengths``
    tokens of model ``model_name``; an index outside a sequence is an error."""
    positions = lengths + index if index < 0 else torch.full_like(lengths, index)
    if ((positions < 0) | (positions >= lengths)).any():
        raise ValueError(
            f"{model_name!r}: pooling index:{index} is outside a sequence of "
            f"{int(lengths.min())} tokens"
        )
    return positions


def _masked_sum(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # float32 before summing: half-precision sums over hundreds of tokens overflow; `where`
    # rather than multiplying by the mask, so that non-finite values at padding cannot leak in
    return torch.where(mask[..., None], hidden.float(), 0.0).sum(dim=1)


def _reduce_sum(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return _masked_sum(hidden, tokens.mask)


def _reduce_image_sum(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return _masked_sum(hidden, tokens.image)


def _reduce_text_sum(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return _masked_sum(hidden, tokens.mask & ~tokens.image)


def _reduce_max(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden.masked_fill(~tokens.mask[..., None], float("-inf")).amax(dim=1).float()


def _reduce_first(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden[tokens.rows, tokens.first].float()


def _reduce_last(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden[tokens.rows, tokens.last].float()


# what a hook computes from one hidden state [batch, tokens, hidden] -> [batch, hidden]
REDUCTIONS: dict[str, Callable[[torch.Tensor, TokenMask], torch.Tensor]] = {
    "sum": _reduce_sum,
    "image_sum": _reduce_image_sum,
    "text_sum": _reduce_text_sum,
    "max": _reduce_max,
    "first": _reduce_first,
    "last": _reduce_last,
}


def reduce_hidden(name: str, hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    """Reduction ``name`` of one hidden state; ``index:N`` gathers ``tokens.picks[N]``
    ([picks, hidden], one per sequence that takes token N from this pass)."""
    if name.startswith("index:"):
        rows, positions = tokens.picks[int(name.removeprefix("index:"))]
        return hidden[rows, positions].float()
    return REDUCTIONS[name](hidden, tokens)


def _add(head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    return head + tail


def _tail(head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    return tail


# how the reductions of two consecutive runs of a suffix join into the whole suffix's (the
# prefix's own reductions, "first" among them, are never joined)
JOINS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sum": _add,
    "image_sum": _add,
    "text_sum": _add,
    "max": torch.maximum,
    "last": _tail,  # the second run is never empty
}


def join_runs(
    head: Mapping[str, torch.Tensor],
    head_counts: Mapping[str, torch.Tensor],
    tail: Mapping[str, torch.Tensor],
    tail_counts: Mapping[str, torch.Tensor],
    in_head: Mapping[int, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The reductions and token counts of suffixes made of a ``head`` run followed by a
    non-empty ``tail`` run, row ``k`` of all of them belonging to suffix ``k``;
    ``in_head[N]`` [batch] tells whether token N of a sequence is in its head."""
    joined = {}
    for name, values in tail.items():
        if name.startswith("index:"):
            held = in_head[int(name.removeprefix("index:"))][:, None, None]
            joined[name] = torch.where(held, head[name], values)
        else:
            joined[name] = JOINS[name](head[name], values)
    counts = {name: head_counts[name] + tail_counts[name] for name in tail_counts}
    return joined, counts


@dataclass(frozen=True)
class Parts:
    """The reductions of sequences made of a prefix followed by a suffix.

    ``prefix`` and ``suffix`` hold reductions [batch, states, hidden] over the tokens of each
    part, row ``k`` of both belonging to sequence ``k``; counts are [batch, 1] token numbers;
    ``from_prefix[N]`` [batch] tells whether token N of a sequence is in its prefix.
    """

    prefix: Mapping[str, torch.Tensor]
    prefix_counts: Mapping[str, torch.Tensor]
    suffix: Mapping[str, torch.Tensor]
    suffix_counts: Mapping[str, torch.Tensor]
    from_prefix: Mapping[int, torch.Tensor]


@dataclass(frozen=True)
class Pooling:
    """A pooling strategy: its definition (recorded in the output metadata), the reductions it
    needs over a whole sequence, over an image prefix and over a prompt suffix, how it joins
    the reductions of both parts (``combine(pooling, parts)``), and the token count ("all",
    "image", "text") that divides its sums (None: not a mean)."""

    definition: str
    whole: str
    prefix: str | None
    suffix: str | None
    combine: Callable[[Pooling, Parts], torch.Tensor]
    count: str | None = None
    index: int | None = None  # N of index:N


def _prefix_only(pooling: Pooling, parts: Parts) -> torch.Tensor:
    return parts.prefix[pooling.prefix]


def _suffix_only(pooling: Pooling, parts: Parts) -> torch.Tensor:
    return parts.suffix[pooling.suffix]


def _larger_of_both(pooling: Pooling, parts: Parts) -> torch.Tensor:
    return torch.maximum(parts.prefix[pooling.prefix], parts.suffix[pooling.suffix])


def _mean_of_both(pooling: Pooling, parts: Parts) -> torch.Tensor:
    total = parts.prefix_counts[pooling.count] + parts.suffix_counts[pooling.count]
    return (parts.prefix[pooling.prefix] + parts.suffix[pooling.suffix]) / total[:, :, None]


def _part_holding_index(pooling: Pooling, parts: Parts) -> torch.Tensor:
    in_prefix = parts.from_prefix[pooling.index][:, None, None]
    return torch.where(in_prefix, parts.prefix[pooling.prefix], parts.suffix[pooling.suffix])


POOLINGS: dict[str, Pooling] = {
    "last": Pooling(
        "hidden state of the last non-padding token", "last", None, "last", _suffix_only
    ),
    "mean": Pooling(
        "mean over all non-padding tokens (image and text)",
        "sum",
        "sum",
        "sum",
        _mean_of_both,
        count="all",
    ),
    "max": Pooling(
        "element-wise maximum over all non-padding tokens (image and text)",
        "max",
        "max",
        "max",
        _larger_of_both,
    ),
    "first": Pooling(
        "hidden state of the first non-padding token", "first", "first", None, _prefix_only
    ),
    "image_mean": Pooling(
        "mean over the image tokens (the positions that the image features fill)",
        "image_sum",
        "image_sum",
        "image_sum",
        _mean_of_both,
        count="image",
    ),
    "text_mean": Pooling(
        "mean over the non-image, non-padding tokens (prompt text and special tokens)",
        "text_sum",
        "text_sum",
        "text_sum",
        _mean_of_both,
        count="text",
    ),
}
INDEX_POOLING = re.compile(r"index:(-?\d+)")


def pooling_of(name: str) -> Pooling:
    """The pooling called ``name``: one of :data:`POOLINGS`, or ``index:N``."""
    if name in POOLINGS:
        return POOLINGS[name]
    match = INDEX_POOLING.fullmatch(name)
    if match is None:
        raise KeyError(name)
    index = int(match.group(1))
    reduction = f"index:{index}"
    return Pooling(
        f"hidden state of the token at position {index} of the unpadded sequence "
        "(negative: counted from the end, -1 is the last token)",
        reduction,
        reduction,
        reduction,
        _part_holding_index,
        index=index,
    )


def check_poolings(poolings: Sequence[str]) -> None:
    unknown = [
        name for name in poolings if name not in POOLINGS and not INDEX_POOLING.fullmatch(name)
    ]
    if unknown or not poolings:
        raise ValueError(
            f"poolings {list(poolings)}: each must be one of {list(POOLINGS)} or index:N"
        )


def pool_whole(
    poolings: Sequence[str], reduced: Mapping[str, torch.Tensor], counts: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Pooled values [batch, states, hidden] from reductions over whole sequences."""
    pooled = {}
    for name in poolings:
        pooling = pooling_of(name)
        values = reduced[pooling.whole]
        if pooling.count is not None:
            values = values / counts[pooling.count][:, :, None]
        pooled[name] = values
    return pooled


def pool_parts(poolings: Sequence[str], parts: Parts) -> dict[str, torch.Tensor]:
    """Pooled values [batch, states, hidden] of sequences made of a prefix and a suffix."""
    pooled = {}
    for name in poolings:
        pooling = pooling_of(name)
        pooled[name] = pooling.combine(pooling, parts)
    return pooled


class LayerPooler:
    """Hooks on a model's decoder that reduce the chosen hidden states during a forward pass.

    Use as a context manager (the hooks are removed on exit); :meth:`reduce` runs one forward
    pass with the hooks active and :meth:`pool` pools one plain batch.
    """

    def __init__(
        self, model: LoadedVLM, poolings: Sequence[str], hidden_states: Sequence[int]
    ) -> None:
        check_poolings(poolings)
        n_states = model.num_layers + 1
        if not hidden_states or any(not 0 <= i < n_states for i in hidden_states):
            raise ValueError(
                f"hidden states {list(hidden_states)}: {model.name!r} has indices 0..{n_states - 1}"
            )
        self.model = model
        self.poolings = list(poolings)
        self.hidden_states = list(hidden_states)
        # the N of the index:N poolings
        self.indices = sorted({i for name in poolings if (i := pooling_of(name).index) is not None})
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._tokens: TokenMask | None = None
        self._reductions: list[str] = []
        self._reduced: dict[str, torch.Tensor] = {}
        self._seen: list[bool] = []

    def __enter__(self) -> LayerPooler:
        for slot, index in enumerate(self.hidden_states):
            if index < self.model.num_layers:
                handle = self.model.decoder_layers[index].register_forward_pre_hook(
                    self._layer_input_hook(slot), with_kwargs=True
                )
            else:
                handle = self.model.final_norm.register_forward_hook(self._norm_output_hook(slot))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _layer_input_hook(self, slot: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            self._record(
                slot, self.model.layer_input_state(args[0] if args else kwargs["hidden_states"])
            )

        return hook

    def _norm_output_hook(self, slot: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._record(slot, output)

        return hook

    def _record(self, slot: int, hidden: torch.Tensor) -> None:
        if self._tokens is None:
            return  # a forward pass outside reduce(): not ours to record
        if self._seen[slot]:
            raise RuntimeError(
                f"{self.model.name!r}: hidden state {self.hidden_states[slot]} was computed twice "
                "in one forward pass; this model's decoder does not fit the layer hooks"
            )
        if hidden.shape[:2] != self._tokens.mask.shape:
            raise RuntimeError(
                f"{self.model.name!r}: hidden state {self.hidden_states[slot]} has shape "
                f"{tuple(hidden.shape)}; expected (batch, tokens) "
                f"{tuple(self._tokens.mask.shape)} first"
            )
        self._seen[slot] = True
        for name in self._reductions:
            values = reduce_hidden(name, hidden, self._tokens)
            if name not in self._reduced:  # [rows of this reduction, states, hidden]
                self._reduced[name] = values.new_empty(
                    (values.shape[0], len(self.hidden_states), values.shape[1])
                )
            self._reduced[name][:, slot] = values

    def reduce(
        self, run: Callable[[], object], tokens: TokenMask, reductions: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Call ``run`` (one forward pass) and reduce the tokens that ``tokens`` marks in each
        hidden state it computes.

        Returns, per reduction, a float32 tensor [rows, len(hidden_states), hidden] on the
        model's device: one row per sequence, or per pick for ``index:N``.
        """
        self._reductions = sorted(set(reductions))
        self._reduced = {}
        self._seen = [False] * len(self.hidden_states)
        self._tokens = tokens
        try:
            with torch.inference_mode():
                run()
        finally:
            self._tokens = None
        missing = [i for i, seen in zip(self.hidden_states, self._seen, strict=True) if not seen]
        if missing:
            raise RuntimeError(f"{self.model.name!r}: hidden states {missing} were never computed")
        return self._reduced

    def pool(self, inputs: BatchFeature) -> dict[str, torch.Tensor]:
        """Pool one plain batch; per pooling a float32 CPU tensor [batch, states, hidden]."""
        mask = inputs["attention_mask"]
        tokens = TokenMask.from_attention_mask(mask, self.model.image_token_mask(inputs))
        lengths = tokens.count[:, 0].long()
        picks = {  # token N of each row: the rows' tokens are contiguous (left or right padding)
            index: (tokens.rows, tokens.first + index_positions(index, lengths, self.model.name))
            for index in self.indices
        }
        tokens = replace(tokens, picks=picks)
        reduced = self.reduce(
            lambda: self.model.forward(inputs),
            tokens,
            [pooling_of(name).whole for name in self.poolings],
        )
        pooled = pool_whole(self.poolings, reduced, tokens.counts())
        return {k: v.cpu() for k, v in pooled.items()}
