"""Exact magnitude selection: which ``int(sparsity * numel)`` elements are the smallest.

Every function here gives the answer of a stable full sort: exactly ``k`` elements are selected and
ties at the threshold are broken by position, lowest index first (across several tensors: tensor
order, then index). ``-0.0`` equals ``0.0``; NaN counts as larger than every number and all NaNs
as equal, as in ``torch.sort``.

How: each value is mapped to an integer *key* whose order is the values' order (the float's bit
pattern; for magnitudes the bit pattern with the sign bit cleared). One pass histograms the top
digit of the keys; the bin holding the k-th key is found from the cumulative counts; a second
pass writes the mask of every element outside that bin and records the positions inside it; a
radix select over those few candidates settles the exact threshold and the ties. Bins are ranges
of integers, so no element falls on an edge twice or is missed. When the bin is a single key
(half precision, or the zeros an earlier pruning step left), the second pass writes the final
mask directly. The passes run over chunks of at most 2**27 elements through reused buffers (a
tensor that fits in one chunk keeps its digits there between the passes), so the memory needed
besides the masks is bounded by one chunk, whatever the number or size of the tensors.

Per device: on the CPU, 16-bit digits (for magnitudes, the upper 16 bits of each value with the
sign bit cleared, read straight from memory) and a stable sort of the keys for inputs of at most
32768 elements; elsewhere 12-bit digits, so that the histogram fits in a CUDA block's shared
memory, and no sort. ``benchmarks/selection.py`` measures it against ``torch.kthvalue``,
``torch.topk``, ``torch.sort`` and ``torch.quantile``.

Across shards (DTensors sharded along dim 0, as FSDP2 leaves parameters): each rank runs the same
passes over its own shard, and every count that decides the threshold is summed over the shards'
process group, so the answer is the whole tensor's (the same mask, split by rows) and no weight
travels. Ties go in the whole tensors' order: tensor by tensor, then the shard holding the earlier
rows, then position. With ``b``-bit histogram digits (16 on the CPU, 12 elsewhere), one selection
(a level pruner's one weight, or a global pruner's ``S`` weights at once) sends, per rank:

- the top histogram, ``8 * 2**b`` bytes (512 KiB on the CPU, 32 KiB on a GPU), in one all-reduce;
- when the k-th smallest magnitude is zero, one 8-byte count;
- when its bin holds more than one key, ``ceil((key_bits - b) / d)`` refinement all-reduces of up to
  ``8 * 2**d`` bytes each, ``d`` being 8 while the bin holds fewer than 2**20 elements over all ranks
  and ``b`` otherwise (float32 on the CPU: two of 2 KiB; 16-bit floats: none, their top digit is the key);
- to break ties in the whole tensors' order, one all-gather of ``16 * S`` bytes (each shard's first row
  and its number of keys equal to the threshold), after a refinement or when some such keys are kept.

That is about 0.5 MiB per weight per pruning step on the CPU and 40 KiB on GPUs, whatever the weights' size.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hookprune.sharding import ShardGroup, as_dtensor, is_sharded, local, shard_group

#: the integer type whose bit pattern orders each floating type
_KEY_DTYPES = {torch.float16: torch.int16, torch.bfloat16: torch.int16,
               torch.float32: torch.int32, torch.float64: torch.int64}
_KEY_BITS = {torch.int16: 16, torch.int32: 32, torch.int64: 64}


@dataclass(frozen=True)
class _DevicePlan:
    """How selection runs on one kind of device: histogram digit width, chunk length, and the size
    up to which a stable sort of the keys is cheaper than the histogram passes."""

    digit_bits: int
    chunk: int
    sort_up_to: int


_PLANS = {"cpu": _DevicePlan(digit_bits=16, chunk=1 << 27, sort_up_to=1 << 15)}
_ACCELERATOR_PLAN = _DevicePlan(digit_bits=12, chunk=1 << 27, sort_up_to=0)


def _plan_for(device: torch.device) -> _DevicePlan:
    return _PLANS.get(device.type, _ACCELERATOR_PLAN)


class _Keys:
    """Order-preserving integer keys of one flattened tensor, and their top digits, computed chunk
    by chunk on demand.

    ``magnitude``: keys order ``|x|`` (sign bit cleared); otherwise they order ``x`` itself, with
    ``-0.0`` folded into ``0.0`` and every NaN mapped to the one key above infinity. Magnitude NaNs
    are mapped to that key only once ``clamp_nan`` is set: below the NaNs their payloads do not
    matter. With ``key_float`` None the values are integers and are their own keys.
    """

    def __init__(self, values: torch.Tensor, key_float: torch.dtype | None, magnitude: bool) -> None:
        self.flat = values.detach().reshape(-1)
        self.numel = self.flat.numel()
        self.device = self.flat.device
        self.magnitude = magnitude
        self.key_float = key_float
        self.key_dtype = torch.int64 if key_float is None else _KEY_DTYPES[key_float]
        self.bits = _KEY_BITS[self.key_dtype]
        self.sign_clear = (1 << (self.bits - 1)) - 1
        self.nan_key = self.sign_clear
        if key_float is not None:
            self.nan_key = int(torch.tensor(float("inf"), dtype=key_float).view(self.key_dtype)) + 1
        self.clamp_nan = not magnitude
        #: whether values pass through a float scratch buffer first (another dtype, or -0.0 to fold)
        self.converts = key_float is not None and (self.flat.dtype != key_float or not magnitude)

    def keys(self, start: int, stop: int, out: torch.Tensor, scratch: torch.Tensor | None) -> torch.Tensor:
        """Keys of elements ``start:stop`` written into ``out`` (a key-dtype buffer), returned."""
        return self._keys(self.flat[start:stop], out, scratch)

    def digits(self, start: int, stop: int, out: torch.Tensor, scratch: torch.Tensor | None,
               digits: _Digits) -> torch.Tensor:
        """Top digits of the keys of elements ``start:stop`` written into ``out``, returned.

        Magnitude digits are read straight from the values' bits: with 16-bit digits on a
        little-endian machine they are the upper 16 bits of each value, sign bit cleared.
        """
        if not self.magnitude:
            self.keys(start, stop, out, scratch)
            if digits.shift:
                out.bitwise_right_shift_(digits.shift)
            return out.add_(digits.bias)
        part = self._floats(self.flat[start:stop], scratch)
        if digits.shift == self.bits - 16 and sys.byteorder == "little":
            step = self.bits // 16
            torch.bitwise_and(part.view(torch.int16)[step - 1::step], 0x7FFF, out=out)
        else:
            torch.bitwise_right_shift(part.view(self.key_dtype), digits.shift, out=out)
            out.bitwise_and_(self.sign_clear >> digits.shift)
        return out.clamp_max_(self.nan_key >> digits.shift) if self.clamp_nan else out

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """Keys (NaNs mapped to one key) of the elements at ``positions``, a small index tensor."""
        picked = self.flat[positions]
        out = torch.empty(picked.numel(), dtype=self.key_dtype, device=self.device)
        scratch = torch.empty(picked.numel(), dtype=self.key_float, device=self.device) if self.converts else None
        keys = self._keys(picked, out, scratch)
        return keys.clamp_max_(self.nan_key) if self.magnitude else keys

    def _floats(self, part: torch.Tensor, scratch: torch.Tensor | None) -> torch.Tensor:
        if not self.converts:
            return part
        assert scratch is not None
        floats = scratch[: part.numel()]
        if self.magnitude:
            return floats.copy_(part)
        return torch.add(part, 0.0, out=floats)  # -0.0 + 0.0 is +0.0

    def _keys(self, part: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None) -> torch.Tensor:
        if self.key_float is None:
            return out.copy_(part)
        floats = self._floats(part, scratch)
        bits = floats.view(self.key_dtype)
        if self.magnitude:
            torch.bitwise_and(bits, self.sign_clear, out=out)
            return out.clamp_max_(self.nan_key) if self.clamp_nan else out
        torch.bitwise_right_shift(bits, self.bits - 1, out=out)
        out.bitwise_and_(self.sign_clear).bitwise_xor_(bits)
        return out.masked_fill_(torch.isnan(floats), self.nan_key)


class _Digits:
    """The top-level histogram digit of a key: bin ``d`` holds the keys ``[d << shift, (d + 1) << shift)``
    (signed keys are biased by half the bins, so that every digit is non-negative)."""

    def __init__(self, bits: int, digit_bits: int, magnitude: bool) -> None:
        self.shift = bits - digit_bits
        self.nbins = 1 << digit_bits
        self.bias = 0 if magnitude else 1 << (digit_bits - 1)
        #: magnitude digits fit in 15 bits; signed ones are computed in the key buffer
        self.dtype = torch.int16 if magnitude else None

    def key_range(self, digit: int) -> tuple[int, int]:
        """The first key of bin ``digit`` and the bin's width in bits (0: the bin is one key)."""
        return (digit - self.bias) << self.shift, self.shift


def _refine(keys: torch.Tensor, k: int, low: int, width: int, digit_bits: int, group: ShardGroup | None = None,
            count: int = 0) -> tuple[int, int]:
    """Radix select among ``keys``, all within ``[low, low + 2**width)``: the k-th smallest key
    (1-based), and how many of the keys equal to it are among the k smallest. A few keys take
    8-bit digits, whose small histograms are cheaper than a wide one. With a ``group``, ``keys`` are
    this rank's share of ``count`` keys and each histogram is summed over the group."""
    if (keys.numel() if group is None else count) < 1 << 20:
        digit_bits = min(digit_bits, 8)
    while width > 0:
        shift = max(width - digit_bits, 0)
        digits = torch.bitwise_right_shift(keys - low, shift)
        histogram = torch.bincount(digits, minlength=1 << (width - shift))
        if group is not None:
            histogram = group.all_sum(histogram)
        cumulative = histogram.cumsum(0)
        digit = int(torch.searchsorted(cumulative, torch.tensor([k], device=cumulative.device)))
        if digit:
            k -= int(cumulative[digit - 1])
        low += digit << shift
        width = shift
        if width:
            keys = keys[digits == digit]
    return low, k


class _Selection:
    """The k smallest keys over a sequence of tensors, in the passes the module docstring describes.

    With a ``group`` the tensors are this rank's shards of larger ones (:mod:`hookprune.sharding`): every count
    that decides the threshold is summed over the group, ties are broken in the whole tensors' order, and the
    masks returned are this rank's shards of the whole tensors' masks.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], key_float: torch.dtype | None, magnitude: bool,
                 group: ShardGroup | None = None) -> None:
        self.tensors = tensors
        self.key_float = key_float
        self.magnitude = magnitude
        self.group = group
        self.sources = [_Keys(t, key_float, magnitude) for t in tensors]
        self.plans = [_plan_for(s.device) for s in self.sources]
        self.digits = _Digits(self.sources[0].bits, min(p.digit_bits for p in self.plans), magnitude)
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        #: what each buffer still holds when one source fit in one chunk: (source, what, clamp_nan)
        self._held: dict[tuple[torch.device, torch.dtype], tuple[int, str, bool] | None] = {}

    def keep_masks(self, k: int) -> list[torch.Tensor]:
        """Boolean masks shaped like the tensors, False at exactly the ``k`` smallest keys."""
        total = sum(s.numel for s in self.sources) if self.group is None else self.group.numel
        if k <= 0 or k >= total:
            return [torch.full(t.shape, k <= 0, dtype=torch.bool, device=t.device) for t in self.tensors]
        small = self.group is None and total <= min(p.sort_up_to for p in self.plans)
        masks = self._by_sort(k) if small else self._by_histogram(k)
        return [m.view(t.shape) for m, t in zip(masks, self.tensors, strict=True)]

    def _buffer(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A buffer of one chunk (or of the largest tensor on ``device``, when smaller), reused."""
        buffer = self._buffers.get((device, dtype))
        if buffer is None:
            largest = max(s.numel for s in self.sources if s.device == device)
            buffer = torch.empty(min(_plan_for(device).chunk, largest), dtype=dtype, device=device)
            self._buffers[(device, dtype)] = buffer
        return buffer

    def _chunks(self, source: _Keys, what: str) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, keys or digits)`` over ``source``, written into a buffer reused from chunk
        to chunk; a source that fits in one chunk finds them still there in the next pass."""
        dtype = self.digits.dtype if what == "digits" and self.digits.dtype else source.key_dtype
        slot = (source.device, dtype)
        buffer = self._buffer(*slot)
        scratch = self._buffer(source.device, source.key_float) if source.converts else None
        chunk = _plan_for(source.device).chunk
        for start in range(0, source.numel, chunk):
            stop = min(start + chunk, source.numel)
            out = buffer[: stop - start]
            whole = stop - start == source.numel
            tag = (id(source), what, source.clamp_nan)
            if not whole or self._held.get(slot) != tag:
                if what == "digits":
                    source.digits(start, stop, out, scratch, self.digits)
                else:
                    source.keys(start, stop, out, scratch)
            self._held[slot] = tag if whole else None
            yield start, stop, out

    def _by_sort(self, k: int) -> list[torch.Tensor]:
        home = self.sources[0].device
        keys = torch.cat([s.at(torch.arange(s.numel, device=s.device)).to(home) for s in self.sources])
        keep = torch.ones(keys.numel(), dtype=torch.bool, device=home)
        keep[torch.sort(keys, stable=True).indices[:k]] = False
        return [m.to(s.device) for m, s in zip(keep.split([s.numel for s in self.sources]), self.sources,
                                                strict=True)]

    def _by_histogram(self, k: int) -> list[torch.Tensor]:
        digits = self.digits
        counts = [torch.bincount(chunk, minlength=digits.nbins).cpu()
                  for source in self.sources for _, _, chunk in self._chunks(source, "digits")]
        if self.group is None:
            cumulative = (counts[0] if len(counts) == 1 else torch.stack(counts).sum(0)).cumsum(0)
        else:
            local_counts = torch.stack(counts).sum(0) if counts else torch.zeros(digits.nbins, dtype=torch.int64)
            cumulative = self.group.all_sum(local_counts).cumsum(0)
        digit = int(torch.searchsorted(cumulative, torch.tensor([k])))
        nan_digit = self.sources[0].nan_key >> digits.shift
        if self.magnitude and digit > nan_digit:
            # unclamped NaN payloads spread over the bins above the NaN key's: all are that key
            digit = nan_digit
        below = int(cumulative[digit - 1]) if digit else 0
        equal = (int(cumulative[-1]) if digit == nan_digit and self.magnitude else int(cumulative[digit])) - below
        if digit >= nan_digit:
            for source in self.sources:
                source.clamp_nan = True
        low, width = digits.key_range(digit)
        if self.magnitude and digit == 0 and width:
            zeros = self._count_zeros()
            if k <= zeros:
                width, equal = 0, zeros
        masks = [torch.empty(s.numel, dtype=torch.bool, device=s.device) for s in self.sources]
        if width == 0:
            self._write_threshold(masks, low, k - below, equal)
        else:
            self._write_bin(masks, digit, k - below, low, width, equal)
        return masks

    def _count_zeros(self) -> int:
        zeros = sum(stop - start - int(torch.count_nonzero(keys))
                    for source in self.sources for start, stop, keys in self._chunks(source, "keys"))
        if self.group is not None:
            zeros = int(self.group.all_sum(torch.tensor([zeros]))[0])
        return zeros

    def _equal_before(self, threshold: int) -> list[int]:
        """With a group: for each source, how many keys equal to ``threshold`` precede this rank's shard of it."""
        assert self.group is not None
        counts = [sum(int(torch.count_nonzero(keys == threshold)) for _, _, keys in self._chunks(source, "keys"))
                  for source in self.sources]
        return self.group.counts_before(counts)

    def _write_threshold(self, masks: list[torch.Tensor], threshold: int, need: int, equal_total: int) -> None:
        """Masks for a known threshold key: keys above it are kept, and of the ``equal_total`` keys
        equal to it the first ``need`` (in order) are pruned and the rest kept."""
        seen = 0
        starts = self._equal_before(threshold) if self.group is not None and need != equal_total else None
        for index, (source, mask) in enumerate(zip(self.sources, masks, strict=True)):
            if starts is not None:
                seen = starts[index]
            for start, stop, keys in self._chunks(source, "keys"):
                out = mask[start:stop]
                torch.gt(keys, threshold, out=out)
                if need == equal_total or seen >= equal_total:
                    continue
                equal = keys == threshold
                count = int(torch.count_nonzero(equal))
                if seen >= need:
                    out |= equal
                elif seen + count > need:
                    out |= equal & (equal.cumsum(0) > need - seen)
                seen += count

    def _write_bin(self, masks: list[torch.Tensor], digit: int, k: int, low: int, width: int, in_bin: int) -> None:
        """Masks when the k-th key (k counted within the bin, which holds ``in_bin`` keys) lies in bin ``digit``:
        everything outside the bin is decided in one pass, the bin's elements by a radix select among them."""
        positions = []
        for source, mask in zip(self.sources, masks, strict=True):
            found = []
            for start, stop, chunk in self._chunks(source, "digits"):
                torch.gt(chunk, digit, out=mask[start:stop])
                inside = (chunk == digit).nonzero().squeeze(1)
                if inside.numel():
                    found.append(inside + start)
            positions.append(torch.cat(found) if found else torch.empty(0, dtype=torch.int64, device=source.device))
        home = self.sources[0].device
        candidates = torch.cat([s.at(p).to(home) for s, p in zip(self.sources, positions, strict=True)])
        threshold, need = _refine(candidates, k, low, width, self.digits.nbins.bit_length() - 1, self.group,
                                  in_bin)
        equal = candidates == threshold
        sizes = [p.numel() for p in positions]
        if self.group is None:
            keep = (candidates > threshold) | (equal & (equal.cumsum(0) > need))
        else:
            parts = equal.split(sizes)
            before = self.group.counts_before([int(part.sum()) for part in parts])
            order = torch.cat([part.cumsum(0) + ahead for part, ahead in zip(parts, before, strict=True)])
            keep = (candidates > threshold) | (equal & (order > need))
        for mask, where, decided in zip(masks, positions, keep.split(sizes), strict=True):
            mask[where] = decided.to(mask.device)


def _refuse_meta(tensor: torch.Tensor, what: str) -> None:
    if tensor.device.type == "meta":
        raise ValueError(f"cannot select on {what}: it is on the 'meta' device and holds no values "
                         "(build the model on a real device first)")


def _check_floating(tensor: torch.Tensor, what: str) -> None:
    _refuse_meta(tensor, what)
    if tensor.dtype not in _KEY_DTYPES:
        raise TypeError(f"{what} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be within [0, 1], got {sparsity}")


def _common_float(dtypes: set[torch.dtype]) -> torch.dtype:
    """The floating type that holds values of all ``dtypes`` exactly."""
    if len(dtypes) == 1:
        return next(iter(dtypes))
    return torch.float64 if torch.float64 in dtypes else torch.float32


def prune_mask_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean tensor, True at the ``k`` smallest scores (ties: lowest index first).

    Scores are ordered as numbers, sign included (pass magnitudes to rank by magnitude); integer
    and boolean scores are ordered exactly as integers.
    """
    _refuse_meta(scores, "the scores")
    if scores.dtype.is_complex:
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    key_float: torch.dtype | None = None
    if scores.dtype.is_floating_point:
        key_float = scores.dtype if scores.dtype in (torch.float32, torch.float64) else torch.float32
    if is_sharded(scores):
        (keep,) = _select_sharded([scores], key_float, False, k, "the scores")
        return ~keep
    (keep,) = _Selection([scores], key_float, magnitude=False).keep_masks(k)
    return ~keep


def _select_sharded(tensors: Sequence[Any], key_float: torch.dtype | None, magnitude: bool, k: int,
                    what: str) -> list[Any]:
    """Keep-masks (DTensors laid out as ``tensors``) of the whole tensors the DTensors ``tensors`` are shards of,
    selected exactly across the shards by summing histograms over their process group."""
    group = shard_group(tensors, what)
    locals_ = [local(t) for t in tensors]
    masks = _Selection(locals_, key_float, magnitude, group).keep_masks(k)
    return [as_dtensor(m, t) for m, t in zip(masks, tensors, strict=True)]


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) element of ``values`` as a 0-d tensor, selected exactly."""
    if not 1 <= k <= values.numel():
        raise ValueError(f"k must be within [1, {values.numel()}], got {k}")
    return values.reshape(-1)[prune_mask_smallest(values, k).reshape(-1)].max()


def level_keep_mask(weights: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask zeroing exactly ``int(sparsity * numel)`` smallest-magnitude elements.

    For a DTensor sharded along dim 0 (a parameter under FSDP2) the count and the ties are those of the whole
    tensor, found by summing histograms over the shards' process group (no weights travel), and the mask is a
    DTensor laid out as ``weights``. Collective then: every rank of the group must call it.
    """
    _check_sparsity(sparsity)
    _check_floating(weights, "the weights")
    k = int(sparsity * weights.numel())
    if is_sharded(weights):
        return _select_sharded([weights], weights.dtype, True, k, "the weights")[0]
    (keep,) = _Selection([weights], weights.dtype, magnitude=True).keep_masks(k)
    return keep


def global_keep_masks(tensors: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks for several tensors under one magnitude threshold.

    Exactly ``int(sparsity * total)`` elements are zeroed across all of them (``total`` is the sum
    of their sizes): the smallest magnitudes, ties broken by the mapping's order, then by index.
    The histogram is accumulated tensor by tensor, so nothing is concatenated; tensors of different
    floating types are compared exactly (in float32, or in float64 when one of them is float64).
    DTensors sharded along dim 0 on one mesh (parameters under FSDP2) are selected over across the shards, as
    :func:`level_keep_mask` does, and get DTensor masks.
    """
    _check_sparsity(sparsity)
    if not tensors:
        return {}
    for name, tensor in tensors.items():
        _check_floating(tensor, f"tensor '{name}'")
    values = list(tensors.values())
    k = int(sparsity * sum(t.numel() for t in values))
    key_float = _common_float({t.dtype for t in values})
    if any(is_sharded(t) for t in values):
        return dict(zip(tensors, _select_sharded(values, key_float, True, k, "the tensors"), strict=True))
    selection = _Selection(values, key_float, magnitude=True)
    return dict(zip(tensors, selection.keep_masks(k), strict=True))


def threshold_keep_mask(weights: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean keep-mask of elements whose magnitude exceeds ``threshold`` (Distiller's ``threshold_mask``)."""
    return weights.detach().abs() > threshold
