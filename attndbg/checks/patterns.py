"""Stage 6 — patterns: per-head shape of attention. Warnings and infos only, never errors:
healthy trained models have sinks and sharp heads. The checks read ``ctx.heads``, whose means
leave out the query rows at padding positions of a padded batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from attndbg.registry import Check, Hit
from attndbg.report import HeadStats, Severity
from attndbg.vocab import Statistic

if TYPE_CHECKING:
    from attndbg.context import CaseContext

COLLAPSED_SHARE = 0.9  # of rows with max weight > 0.95
UNIFORM_SHARE = 0.9  # of rows with entropy / log(n_keys) > 0.99
LAYER_COLLAPSE = 0.1  # mean normalised entropy of all heads
SINK_MASS = 0.3  # mean weight on the first key (attention-sink literature)
DUPLICATE_COSINE = 0.995
MIN_KEYS = 8  # patterns mean little over fewer keys
POSITIONAL = 0.9  # weight on the token itself, its neighbours and the first token
# Head statistics skip padding queries: a padded batch discards their outputs, and all its pad
# tokens attend alike, so they would make any head look like a sink or a collapsed head.
REAL_ROWS = (
    " In self-attention (q_len = k_len) the query rows at padding positions of a padded batch "
    "(their own key masked for every query) are left out: their outputs are discarded."
)


def _heads(ctx: CaseContext) -> list[HeadStats]:
    return [head for head in ctx.heads if head.rows]


def _enough(ctx: CaseContext) -> bool:
    return ctx.sizes["Lk"] >= MIN_KEYS and ctx.sizes["Lq"] >= 2


class CollapsedHead(Check):
    """A head puts almost all of its weight on a single key in nearly every row."""

    code = "PAT001"
    name = "collapsed-head"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    thresholds = {"collapsed_share": COLLAPSED_SHARE, "positional": POSITIONAL}
    rationale = (
        f"A head is collapsed when over {COLLAPSED_SHARE:.0%} of its rows (with ≥ 4 keys) put "
        "more than 0.95 on one key. That is fine for a deliberate positional head (previous "
        "token, the token itself) or a sink head (first token), so those are not reported; a "
        "head that collapses onto varying content keys is usually entropy collapse from large "
        "logits (see SCL003), and its gradients are tiny." + REAL_ROWS
    )
    fix = """
# Bound the logits (QK-norm) or lower the learning rate of the attention projections:
q, k = self.q_norm(q), self.k_norm(k)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not _enough(ctx):
            return
        heads = [
            h
            for h in _heads(ctx)
            if h.collapsed_share > self.limit(ctx, "collapsed_share")
            and h.positional_mass < self.limit(ctx, "positional")
        ]
        if heads:
            share = self.limit(ctx, "collapsed_share")
            yield Hit(
                f"{len(heads)} head(s) put > 0.95 on one key in over {share:.0%} of rows "
                f"(heads {[h.head for h in heads]}), not on a fixed position",
                {
                    "heads": [h.head for h in heads],
                    "collapsed_share": {h.head: round(h.collapsed_share, 3) for h in heads},
                    "entropy_ratio": {h.head: round(h.entropy_ratio, 3) for h in heads},
                },
                head=heads[0].head,
            )


class UniformHead(Check):
    """A head attends almost uniformly to every key."""

    code = "PAT002"
    name = "uniform-head"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    thresholds = {"uniform_share": UNIFORM_SHARE}
    rationale = (
        f"A head is uniform when over {UNIFORM_SHARE:.0%} of its rows have entropy above 0.99 × "
        "log(n_keys): it averages its values regardless of content, as an untrained or "
        "scale-broken layer does (see SCL002/SCL004). Trained heads occasionally look like this "
        "in the first layer, hence a warning." + REAL_ROWS
    )
    fix = """
# Check that q and k carry signal and the scale is applied once:
print(q.std(), k.std(), (q @ k.transpose(-2, -1) * scale).std())
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not _enough(ctx):
            return
        heads = [h for h in _heads(ctx) if h.uniform_share > self.limit(ctx, "uniform_share")]
        if heads:
            yield Hit(
                f"{len(heads)} head(s) attend uniformly in over {self.limit(ctx, 'uniform_share'):.0%} "
                "of rows "
                f"(heads {[h.head for h in heads]})",
                {
                    "heads": [h.head for h in heads],
                    "entropy_ratio": {h.head: round(h.entropy_ratio, 4) for h in heads},
                },
                head=heads[0].head,
            )


class LayerEntropyCollapse(Check):
    """Every head of the layer has low entropy."""

    code = "PAT003"
    name = "layer-entropy-collapse"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    thresholds = {"layer_collapse": LAYER_COLLAPSE}
    rationale = (
        f"When the mean normalised entropy of all heads falls below {LAYER_COLLAPSE} the whole "
        "layer has collapsed to near one-hot attention — the training instability described "
        "by Zhai et al. (2023), usually preceded by logit growth. Single sharp heads are "
        "normal; a whole layer is not." + REAL_ROWS
    )
    fix = """
# sigma-reparam or QK-norm on the layer, and check the warm-up / learning rate:
q, k = self.q_norm(q), self.k_norm(k)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not _enough(ctx):
            return
        heads = _heads(ctx)
        if len(heads) < 2:
            return
        mean = sum(h.entropy_ratio for h in heads) / len(heads)
        if mean < self.limit(ctx, "layer_collapse"):
            yield Hit(
                f"mean normalised entropy across {len(heads)} heads is {mean:.3f} "
                f"(< {self.limit(ctx, 'layer_collapse')}): the layer has collapsed",
                {
                    "mean_entropy_ratio": mean,
                    "heads": len(heads),
                    "threshold": self.limit(ctx, "layer_collapse"),
                },
            )


class AttentionSink(Check):
    """A head sends much of its attention to the first token (an attention sink)."""

    code = "PAT004"
    name = "attention-sink"
    severity = Severity.INFO
    reads = frozenset({Statistic.ROWS})
    thresholds = {"sink_mass": SINK_MASS}
    rationale = (
        f"Trained transformers park attention on the first token when a head has nothing to "
        f"do (Xiao et al. 2023, 'attention sinks'). Reported when a head's mean weight on key 0 "
        f"exceeds {SINK_MASS}. Not a defect — but it matters for KV-cache eviction (keep the "
        "first tokens) and when reading weights as explanations." + REAL_ROWS
    )
    fix = """
# Streaming / cache eviction: always keep the first few tokens' K/V (StreamingLLM)
kept = torch.cat([k[..., :4, :], k[..., -window:, :]], dim=-2)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not _enough(ctx):
            return
        heads = [h for h in _heads(ctx) if h.sink_mass > self.limit(ctx, "sink_mass")]
        if heads:
            yield Hit(
                f"{len(heads)} head(s) put over {self.limit(ctx, 'sink_mass')} of their weight on the "
                "first token on "
                f"average (heads {[h.head for h in heads]})",
                {
                    "heads": [h.head for h in heads],
                    "sink_mass": {h.head: round(h.sink_mass, 3) for h in heads},
                },
                head=heads[0].head,
            )


class DuplicateHeads(Check):
    """Two heads produce (nearly) the same attention pattern."""

    code = "PAT005"
    name = "duplicate-heads"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS, Statistic.HEAD_GRAM})
    thresholds = {"duplicate_cosine": DUPLICATE_COSINE}
    rationale = (
        f"Heads whose attention maps have cosine similarity above {DUPLICATE_COSINE} in every "
        "sample compute the same thing: wasted capacity at best, and often a bug — the same "
        "projection slice used for several heads, a reshape that repeats one head, or GQA "
        "expanded on the wrong axis. Pairs where both heads are uniform are left to PAT002."
    )
    fix = """
# Split heads from the projection with view + transpose, not expand/repeat:
q = self.q_proj(x).view(B, L, n_heads, head_dim).transpose(1, 2)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        if not _enough(ctx):
            return
        gram = ctx.stats.head_gram
        norms = torch.sqrt(torch.diagonal(gram, dim1=-2, dim2=-1)).clamp_min(1e-30)
        cosine = gram / (norms[..., :, None] * norms[..., None, :])
        worst = cosine.amin(dim=0)  # similar in every sample
        uniform = {h.head for h in _heads(ctx) if h.uniform_share > UNIFORM_SHARE}
        pairs = [
            (a, b, float(worst[a, b]))
            for a in range(worst.shape[0])
            for b in range(a + 1, worst.shape[0])
            if float(worst[a, b]) > self.limit(ctx, "duplicate_cosine")
            and not (a in uniform and b in uniform)
        ]
        if pairs:
            yield Hit(
                f"{len(pairs)} pair(s) of heads have near-identical attention maps "
                f"(cosine > {self.limit(ctx, 'duplicate_cosine')}): {[(a, b) for a, b, _ in pairs[:6]]}",
                {
                    "pairs": [[a, b] for a, b, _ in pairs],
                    "cosine": [round(c, 5) for *_, c in pairs],
                    "threshold": self.limit(ctx, "duplicate_cosine"),
                },
                head=pairs[0][0],
            )
