"""A slot-based KV cache: one fixed row per concurrent request, so requests of any length share one batched step.

transformers' own caches keep one length for the whole batch (``cache_position`` is shared); continuous batching
needs every row at its own position. This cache (hand-written for that reason) holds, per layer, keys and values of
shape ``[slots, kv_heads, context, head_dim]``; the token at position ``p`` of a request lives at index ``p`` of its
slot. A forward step names the slots and positions it writes (``bind``); the model's attention layers call
``update``, which writes the new keys/values there and returns each row's keys/values up to the longest row. The
attention mask (built by ``forward_with_cache``) hides, per row, the positions that row has not written.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel


class SlotKVCache:
    def __init__(self, model: PreTrainedModel, num_slots: int, context: int):
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        parameter = next(model.parameters())
        shape = (num_slots, config.num_key_value_heads, context, head_dim)
        self.keys = [torch.zeros(shape, dtype=parameter.dtype, device=parameter.device)
                     for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.num_slots, self.context = num_slots, context
        self.model_argument = _cache_argument(model)  # looked up once: inspect.signature costs ~2% of a decode step
        self._slots = self._positions = None
        self._kv_length = 0
        self._contiguous: slice | None = None
        self._single: tuple[int, int] | None = None

    def bind(self, slots: list[int], positions: torch.Tensor) -> None:
        """The rows (``slots``) and positions (``[len(slots), q]``) the next forward step writes; a row's positions
        are consecutive (a chunk of its prompt, or its next token)."""
        self._positions = positions
        self._kv_length = int(positions.max()) + 1
        first = slots[0]
        # One row (a lone request, a prompt chunk) is written through a slice, not an index_put with index tensors:
        # the same values, a few percent of a micro model's decode step less.
        self._single = (first, self._kv_length - positions.shape[1]) if len(slots) == 1 else None
        self._slots = None if self._single else torch.tensor(slots, device=positions.device)
        # Consecutive slots are read as a view (no copy); others are gathered.
        self._contiguous = slice(first, first + len(slots)) if slots == list(range(first, first + len(slots))) \
            else None

    def copy_prefix(self, source: int, targets: list[int], length: int) -> None:
        """Positions ``0..length-1`` of slot ``source`` into each of ``targets`` (a prompt prefilled once, shared)."""
        for store in self.keys + self.values:
            store[targets, :, :length] = store[source, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Called by each attention layer with this step's keys/values ``[batch, kv_heads, q, head_dim]``."""
        for store, states in ((self.keys[layer_idx], key_states), (self.values[layer_idx], value_states)):
            if self._single:
                slot, start = self._single
                store[slot, :, start:self._kv_length].copy_(states[0])
            else:
                store[self._slots[:, None], :, self._positions] = states.transpose(1, 2).to(store.dtype)
        keys = self.keys[layer_idx][:, :, :self._kv_length]
        values = self.values[layer_idx][:, :, :self._kv_length]
        if self._contiguous is not None:
            return keys[self._contiguous], values[self._contiguous]
        return keys.index_select(0, self._slots), values.index_select(0, self._slots)


def _cache_argument(model: PreTrainedModel) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated): use what this one has."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def forward_with_cache(model: PreTrainedModel, cache: SlotKVCache, input_ids: torch.Tensor, slots: list[int],
                       positions: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
    """Logits for ``input_ids`` ``[batch, q]`` whose tokens sit at ``positions`` ``[batch, q]`` of ``slots``.

    Each row attends to its own slot's positions up to and including each query's position; everything else is masked
    with an additive mask (works for both the ``sdpa`` and ``eager`` attention of transformers)."""
    cache.bind(slots, positions)
    kv_positions = torch.arange(cache._kv_length, device=input_ids.device)
    visible = kv_positions[None, None, :] <= positions[:, :, None]  # [batch, q, kv]
    dtype = cache.keys[0].dtype  # the model's
    mask = torch.zeros(visible.shape, dtype=dtype, device=input_ids.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    output = model(input_ids=input_ids, attention_mask=mask[:, None], position_ids=positions, use_cache=True,
                   logits_to_keep=logits_to_keep, **{cache.model_argument: cache})
    return output.logits
