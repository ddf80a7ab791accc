"""Per-case context: the tensors normalised to SDPA's layout, resolved settings, statistics.

Checks read this object. Normalisation is lazy so that shape checks can run on
inputs that cannot be normalised, and the heavy statistics pass runs once, on
first use, under the memory budget.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, Any

from attndbg.case import DEFAULT_LAYOUT, Case
from attndbg.vocab import CausalAlign, MaskSemantics, Statistic

if TYPE_CHECKING:
    import torch

    from attndbg.report import HeadStats
    from attndbg.stats import AttentionStats

QKV_ROLES = ("q", "k", "v", "out")
# An additive mask entry at or below this counts as "meant to be masked" for coverage statistics:
# HF's classic fill is -10000, ALiBi biases stay above it for any practical length.
FULL_NAMES = {"b": "batch", "h": "heads", "s": "seq", "d": "dim"}


class ShapeProblem(Exception):
    """Raised by normalisation when shapes make the reference undefined."""


class CaseContext:
    def __init__(
        self,
        case: Case,
        device: str = "cpu",
        max_memory: int = 1 << 30,
        thresholds: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.case = case
        self.thresholds = thresholds or {}
        self.device = device
        self.max_memory = max_memory
        self.guesses: list[str] = list(case.notes)
        self.raw = case.tensors
        self.settings = case.settings
        self._stats: AttentionStats | None = None
        # the statistics families the running checks read; None (outside the engine) = all
        self.wanted: frozenset[Statistic] | None = None
        self._nonfinite: dict[str, tuple[int, int, int]] = {}

    # ---- what is present -------------------------------------------------------------------
    def has(self, role: str) -> bool:
        return role in self.raw

    @property
    def has_qkv(self) -> bool:
        return all(r in self.raw for r in ("q", "k", "v"))

    def key(self, role: str) -> str:
        return self.case.keys.get(role, role)

    # ---- layouts ---------------------------------------------------------------------------
    @cached_property
    def layout(self) -> str | None:
        """Layout of q/k/v/out, from flag or metadata, else guessed from q's rank."""
        if self.settings.layout:
            return self.settings.layout
        reference = next((self.raw[r] for r in ("q", "k", "v") if r in self.raw), None)
        if reference is None:
            return None
        guessed = DEFAULT_LAYOUT.get(reference.dim())
        if guessed:
            described = ", ".join(FULL_NAMES[c] for c in guessed)
            self.guesses.append(
                f"layout {guessed}: q is {reference.dim()}-D, read as ({described}) "
                "(set --layout or metadata layout= to override)"
            )
        return guessed

    def dims(self, role: str) -> dict[str, int]:
        """Sizes by letter (b, h, s, d) of a q/k/v/out tensor; missing letters are 1."""
        tensor = self.raw[role]
        layout = self.layout or ""
        if tensor.dim() != len(layout):
            raise ShapeProblem(f"{role} is {tensor.dim()}-D but the layout {layout} has {len(layout)}")
        sizes = {"b": 1, "h": 1}
        sizes.update(dict(zip(layout, tensor.shape)))
        return sizes

    @cached_property
    def sizes(self) -> dict[str, int]:
        """B, Hq, Hk, Lq, Lk, D, Dv — from q/k/v when present, else from weights/scores."""
        if self.has_qkv:
            q, k, v = self.dims("q"), self.dims("k"), self.dims("v")
            return {
                "B": max(q["b"], k["b"]),
                "Hq": q["h"],
                "Hk": k["h"],
                "Lq": q["s"],
                "Lk": k["s"],
                "D": q["d"],
                "Dv": v["d"],
            }
        probs = self.raw.get("weights", self.raw.get("scores"))
        assert probs is not None  # the loader refuses a case with neither q/k/v nor weights/scores
        shape = list(probs.shape)
        while len(shape) < 4:
            shape.insert(0, 1)
        b, h, lq, lk = shape[-4:]
        return {"B": b, "Hq": h, "Hk": h, "Lq": lq, "Lk": lk, "D": 0, "Dv": 0}

    # ---- settings --------------------------------------------------------------------------
    @cached_property
    def dtype(self) -> torch.dtype:
        for role in ("q", "k", "v", "scores", "weights"):
            if role in self.raw and self.raw[role].is_floating_point():
                return self.raw[role].dtype
        import torch

        return torch.float32

    @cached_property
    def scale(self) -> float:
        if self.settings.scale is not None:
            return float(self.settings.scale)
        d = self.sizes["D"]
        if d <= 0:
            return 1.0
        self.guesses.append(f"scale 1/sqrt({d}) = {1 / math.sqrt(d):.4g} (SDPA default)")
        return 1.0 / math.sqrt(d)

    @cached_property
    def enable_gqa(self) -> bool:
        hq, hk = self.sizes["Hq"], self.sizes["Hk"]
        if self.settings.enable_gqa is not None:
            return bool(self.settings.enable_gqa)
        if hq != hk and hk and hq % hk == 0:
            self.guesses.append(f"enable_gqa: {hq} query heads share {hk} key/value heads")
            return True
        return False

    @cached_property
    def mask_semantics(self) -> MaskSemantics | None:
        if "mask" not in self.raw:
            return None
        mask = self.raw["mask"]
        if self.settings.mask_semantics:
            return MaskSemantics(self.settings.mask_semantics)
        if self.case.mask_key == "key_padding_mask":
            guess = MaskSemantics.DROP
            why = "named key_padding_mask: True/1 = ignore, as nn.MultiheadAttention reads it"
        elif mask.dtype == __import__("torch").bool:
            guess, why = MaskSemantics.KEEP, "bool mask: True = attend, as SDPA reads it"
        elif mask.is_floating_point():
            guess, why = MaskSemantics.ADDITIVE, "float mask: added to the scores, as SDPA reads it"
        else:
            guess = MaskSemantics.KEEP
            why = "integer mask: nonzero = attend (SDPA would refuse an int mask)"
        self.guesses.append(f"mask semantics {guess}: {why}")
        return guess

    @cached_property
    def is_causal(self) -> bool:
        return bool(self.settings.is_causal)

    # ---- normalised tensors (float32, SDPA layout, on the device) --------------------------
    def _to_bhsd(self, role: str) -> torch.Tensor:
        tensor = self.raw[role]
        layout = self.layout or ""
        order = [layout.index(c) for c in "bhsd" if c in layout]
        tensor = tensor.permute(order)
        present = [c for c in "bhsd" if c in layout]
        shape = [tensor.shape[present.index(c)] if c in present else 1 for c in "bhsd"]
        return tensor.reshape(shape).to(self.device, self.compute_dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        import torch

        return torch.float32

    @cached_property
    def q(self) -> torch.Tensor:
        return self._to_bhsd("q")

    @cached_property
    def k(self) -> torch.Tensor:
        return self._expand_kv(self._to_bhsd("k"))

    @cached_property
    def v(self) -> torch.Tensor:
        return self._expand_kv(self._to_bhsd("v"))

    @cached_property
    def out(self) -> torch.Tensor | None:
        return self._to_bhsd("out") if "out" in self.raw else None

    def _expand_kv(self, tensor: torch.Tensor) -> torch.Tensor:
        from attndbg.attention import expand_kv_heads

        # a single K/V head (multi-query attention) broadcasts over the query heads in SDPA
        broadcast = self.sizes["Hk"] == 1
        return expand_kv_heads(tensor, self.sizes["Hq"], dim=1) if self.enable_gqa or broadcast else tensor

    def _scores_like(self, role: str) -> torch.Tensor | None:
        """User weights/scores viewed as (B or 1, H or 1, Lq, Lk), in their stored dtype."""
        if role not in self.raw:
            return None
        tensor = self.raw[role]
        if tensor.dim() == 3 and self.has_qkv:
            b, h = self.sizes["B"], self.sizes["Hq"]
            if tensor.shape[0] == b * h and b * h != b:
                return tensor.reshape(b, h, *tensor.shape[1:])
            return tensor.unsqueeze(1)
        while tensor.dim() < 4:
            tensor = tensor.unsqueeze(0)
        return tensor

    @cached_property
    def user_weights(self) -> torch.Tensor | None:
        return self._scores_like("weights")

    @cached_property
    def user_scores(self) -> torch.Tensor | None:
        return self._scores_like("scores")

    @cached_property
    def mask4d(self) -> torch.Tensor | None:
        """The mask broadcastable to (B, H, Lq, Lk), stored dtype (converted per chunk)."""
        if "mask" not in self.raw:
            return None
        mask = self.raw["mask"]
        if self.case.mask_key == "key_padding_mask" and mask.dim() == 2:
            return mask[:, None, None, :]
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        return mask

    def nonfinite(self, role: str) -> tuple[int, int, int]:
        """(NaN, +Inf, -Inf) counts of a stored tensor, computed once per case: the summary
        table, NUM001 and NUM002 all read them (a finite tensor costs one pass)."""

        from attndbg.stats.scan import nonfinite_counts

        cache = self._nonfinite
        if role not in cache:
            cache[role] = nonfinite_counts(self.raw[role])
        return cache[role]

    def keep_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A (slice of the) stored mask as booleans, True = attended, under the assumed semantics;
        an additive entry counts as masked at or below MASKED_BIAS."""
        import torch

        from attndbg.attention import MASKED_BIAS

        if self.mask_semantics == MaskSemantics.ADDITIVE:
            return mask.to(torch.float32) > MASKED_BIAS
        return mask.bool() if self.mask_semantics == MaskSemantics.KEEP else ~mask.bool()

    def mask_bias(self, batch: int, rows: slice, semantics: MaskSemantics | None = None) -> Any:
        """Additive bias (H or 1, rows, Lk) in float32 for one chunk, or None without a mask.

        ``semantics`` lets hypotheses re-read the same mask another way.
        """
        import torch

        mask = self.mask4d
        if mask is None:
            return None
        semantics = semantics or self.mask_semantics
        chunk = mask[min(batch, mask.shape[0] - 1)]
        chunk = chunk[:, rows] if chunk.shape[1] > 1 else chunk
        chunk = chunk.to(self.device)
        if semantics == MaskSemantics.ADDITIVE:
            return chunk.to(torch.float32)
        keep = chunk.bool() if semantics == MaskSemantics.KEEP else ~chunk.bool()
        zero = torch.zeros((), device=self.device)
        return torch.where(keep, zero, torch.tensor(float("-inf"), device=self.device))

    def causal_bias(self, rows: slice, align: CausalAlign = CausalAlign.UPPER_LEFT) -> torch.Tensor:
        from attndbg.attention import causal_bias

        return causal_bias(rows, self.sizes["Lq"], self.sizes["Lk"], align, self.device)

    @property
    def causal_align(self) -> CausalAlign | None:
        """The causal alignment of the assumed reading: SDPA's upper-left, or none."""
        return CausalAlign.UPPER_LEFT if self.is_causal else None

    def combined_bias(
        self, batch: int, rows: slice, mask: MaskSemantics | None, causal: CausalAlign | None
    ) -> Any:
        """Mask (read as ``mask`` semantics, or none) plus causal (aligned ``causal``, or none)
        as one additive bias for a chunk of rows, or None when neither applies."""
        bias = None
        if mask is not None:
            bias = self.mask_bias(batch, rows, mask)
        if causal:
            causal_part = self.causal_bias(rows, causal)
            bias = causal_part if bias is None else bias + causal_part
        return bias

    # ---- statistics ------------------------------------------------------------------------
    @property
    def stats(self) -> AttentionStats:
        """The statistics pass, run on first use (the engine never runs it for checks that do
        not read it)."""
        if self._stats is None:
            from attndbg.stats import compute_stats

            self._stats = compute_stats(self)
        return self._stats

    @property
    def has_stats(self) -> bool:
        """Whether the statistics pass has run for this case (nothing is computed by asking)."""
        return self._stats is not None

    @property
    def stats_if_computed(self) -> AttentionStats | None:
        return self._stats

    @cached_property
    def heads(self) -> list[HeadStats]:
        """Per-head statistics over the batch, padding query rows left out; the report's table
        and the PAT checks read this."""
        from attndbg.stats import heads_over_batch

        return heads_over_batch(self.stats, self.padding_query_rows)

    @cached_property
    def padding_query_rows(self) -> torch.Tensor | None:
        """(B or 1, Lq) bool: query rows at padding positions under the assumed mask reading
        (:func:`attndbg.attention.padding_queries`), worked out once per case for the head
        statistics, the duplicate-head Gram and the mask checks; None without a mask."""
        from attndbg.attention import padding_queries

        keep = None if self.mask4d is None else self.keep_mask(self.mask4d)
        return padding_queries(keep, self.sizes["Lq"], self.sizes["Lk"])

    def describe_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if self.has_qkv:
            settings["scale"] = self.scale
            settings["enable_gqa"] = self.enable_gqa
        settings["is_causal"] = self.is_causal
        if "mask" in self.raw:
            settings["mask_semantics"] = self.mask_semantics
        if self.settings.dropout_p:
            settings["dropout_p"] = self.settings.dropout_p
        settings["origins"] = dict(self.case.origins)
        return settings
