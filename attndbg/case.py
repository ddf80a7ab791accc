"""A case: the tensors of one attention call plus its settings, before any checking."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attndbg.errors import InputError, UsageError
from attndbg.vocab import MaskSemantics

if TYPE_CHECKING:
    import torch

ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "q": ("q", "query"),
    "k": ("k", "key"),
    "v": ("v", "value"),
    "mask": ("mask", "attn_mask", "attention_mask", "key_padding_mask"),
    "weights": ("weights", "attn_weights", "attn", "probs"),
    "scores": ("scores", "logits"),
    "out": ("out", "output"),
}
ALIAS_TO_ROLE = {alias: role for role, aliases in ROLE_ALIASES.items() for alias in aliases}
ROLE_ORDER = ("q", "k", "v", "mask", "scores", "weights", "out")
MASK_SEMANTICS = MaskSemantics.values()
SETTING_KEYS = (
    "is_causal",
    "scale",
    "layout",
    "mask_semantics",
    "enable_gqa",
    "dropout_p",
    "source",
)
DEFAULT_LAYOUT = {4: "bhsd", 3: "bsd", 2: "sd"}
LAYOUT_LETTERS = set("bhsd")


@dataclass
class Settings:
    """What the user told us (flags override metadata); ``None`` means "not said"."""

    is_causal: bool | None = None
    scale: float | None = None
    layout: str | None = None
    mask_semantics: MaskSemantics | None = None
    enable_gqa: bool | None = None
    dropout_p: float | None = None
    source: str | None = None

    def merged_over(self, base: Settings) -> Settings:
        return Settings(
            **{
                key: getattr(self, key) if getattr(self, key) is not None else getattr(base, key)
                for key in SETTING_KEYS
            }
        )


@dataclass
class Case:
    name: str
    file: str
    tensors: dict[str, torch.Tensor]
    keys: dict[str, str] = field(default_factory=dict)  # role -> name of the tensor in the file
    settings: Settings = field(default_factory=Settings)
    origins: dict[str, str] = field(default_factory=dict)  # setting -> "flag" | "metadata"
    notes: list[str] = field(default_factory=list)
    tokens: list[list[str]] | None = None  # per batch row, from metadata "tokens", for labels
    # recorded step ("qk", "scale", "mask", "softmax", "pv", "call") -> the user's source line
    locations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse q/k/v that cannot be attention inputs; read storage-only floats as float32."""
        for role in ("q", "k", "v"):
            tensor = self.tensors.get(role)
            if tensor is not None and not tensor.is_floating_point():
                raise InputError(
                    f"{self.file}: case {self.name}: {role} is {str(tensor.dtype).removeprefix('torch.')}; "
                    "q, k and v must be floating point (integers are token ids or quantised values: "
                    "save them dequantised)"
                )
        for role in [r for r in ROLE_ORDER if r in self.tensors]:
            tensor = self.tensors[role]
            # float8 (and smaller) types are storage formats without arithmetic kernels
            if tensor.is_floating_point() and tensor.element_size() == 1:
                import torch

                self.tensors[role] = tensor.to(torch.float32)
                dtype = str(tensor.dtype).removeprefix("torch.")
                self.notes.append(f"{role} is {dtype}, read as float32 (no arithmetic in {dtype})")

    @property
    def mask_key(self) -> str:
        return self.keys.get("mask", "mask").rsplit(".", 1)[-1].lower()


def parse_bool(value: str, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InputError(f"{what} is {value!r}; expected true or false")


def parse_layout(value: str, what: str = "layout") -> str:
    layout = value.strip().lower()
    if (
        not 2 <= len(layout) <= 4
        or set(layout) - LAYOUT_LETTERS
        or len(set(layout)) != len(layout)
        or "s" not in layout
        or "d" not in layout
    ):
        raise UsageError(
            f"{what} {value!r} is not a layout; use letters b (batch), h (heads), s (sequence), "
            "d (dim), e.g. bhsd, bshd, bsd, sbd"
        )
    return layout


def parse_mask_semantics(value: str, what: str = "mask_semantics") -> MaskSemantics:
    lowered = value.strip().lower()
    if lowered not in MASK_SEMANTICS:
        raise UsageError(f"{what} is {value!r}; expected one of {', '.join(MASK_SEMANTICS)}")
    return MaskSemantics(lowered)


def settings_from_strings(values: dict[str, str], where: str) -> Settings:
    """Parse metadata strings; a bad value is an input error naming the key."""
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        what = f"{where}: metadata {key}"
        try:
            if key in ("is_causal", "enable_gqa"):
                parsed[key] = parse_bool(raw, what)
            elif key in ("scale", "dropout_p"):
                try:
                    parsed[key] = float(raw)
                except ValueError:
                    raise InputError(f"{what} is {raw!r}; expected a number") from None
            elif key == "layout":
                parsed[key] = parse_layout(raw, what)
            elif key == "mask_semantics":
                parsed[key] = parse_mask_semantics(raw, what)
            elif key == "source":
                parsed[key] = raw
        except UsageError as exc:
            raise InputError(str(exc)) from None
    return Settings(**parsed)


def tokens_from_metadata(value: str | None) -> list[list[str]] | None:
    """Tokens per batch row: metadata ``tokens`` is a JSON list of rows (lists of strings), or
    one flat list — the first row's, as older captures wrote it."""
    if not value:
        return None
    try:
        tokens = json.loads(value)
    except ValueError:
        return None
    if not isinstance(tokens, list) or not tokens:
        return None
    rows = tokens if all(isinstance(row, list) for row in tokens) else [tokens]
    return [[str(t) for t in row] for row in rows]


def locations_from_metadata(value: str | None) -> dict[str, dict[str, Any]]:
    """``{step: {file, line, function, code}}`` as ``attndbg capture`` writes it; entries that
    do not have that form are left out (they only decorate findings)."""
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {
        str(step): {
            "file": where["file"],
            "line": where["line"],
            "function": str(where.get("function", "")),
            "code": str(where.get("code", "")),
        }
        for step, where in parsed.items()
        if isinstance(where, dict)
        and isinstance(where.get("file"), str)
        and isinstance(where.get("line"), int)
        and not isinstance(where.get("line"), bool)
    }


# Which recorded step a finding of each stage is about; the first one recorded wins, then the
# call itself (an SDPA line, or the QK product of hand-written attention).
STEPS_FOR_STAGE: dict[str, tuple[str, ...]] = {
    "scaling": ("scale", "qk"),
    "mask": ("mask",),
    "softmax": ("softmax",),
}
CALL_STEPS = ("call", "qk", "softmax")


def step_location(locations: dict[str, dict[str, Any]], stage: str) -> dict[str, Any] | None:
    """The user's source line a finding of ``stage`` points at, from a case's recorded steps."""
    for step in (*STEPS_FOR_STAGE.get(getattr(stage, "value", stage), ()), *CALL_STEPS):
        if step in locations:
            return locations[step]
    return None
