"""Read cases from safetensors files without ever unpickling anything (the format:
docs/architecture.md, "Input format")."""

from __future__ import annotations

import fnmatch
import itertools
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attndbg.case import (
    ALIAS_TO_ROLE,
    SETTING_KEYS,
    Case,
    Settings,
    locations_from_metadata,
    settings_from_strings,
    tokens_from_metadata,
)
from attndbg.errors import InputError, first_line

_PICKLE_PROTOCOLS = {bytes([0x80, n]) for n in range(2, 6)}
_MAX_HEADER = 100_000_000


@dataclass
class CasePlan:
    """A case as the header describes it; tensors are read only when the case runs."""

    name: str
    file: Path
    keys: dict[str, str]
    settings: Settings
    origins: dict[str, str]
    notes: list[str] = field(default_factory=list)
    tokens: list[list[str]] | None = None
    locations: dict[str, dict[str, Any]] = field(default_factory=dict)


def _sniff(path: Path) -> None:
    """Refuse what is plainly not safetensors before the parser sees it, with a useful hint."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give the .safetensors files inside it")
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(head) < 8:
        raise InputError(f"{path}: is {len(head)} bytes, too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", head[:8])
    size = path.stat().st_size
    if head[8:9] == b"{" and header_len <= _MAX_HEADER and 8 + header_len <= size:
        return  # looks like safetensors; the parser decides the rest
    if head[:2] in _PICKLE_PROTOCOLS:
        raise InputError(
            f"{path}: is a pickle, which attndbg never loads (it can run arbitrary code); "
            "save tensors with safetensors.torch.save_file"
        )
    if head[:4] == b"PK\x03\x04":
        raise InputError(
            f"{path}: is a zip archive such as torch.save writes (a pickle inside), which attndbg "
            "never loads; save tensors with safetensors.torch.save_file"
        )
    if head[:6] == b"\x93NUMPY":
        raise InputError(f"{path}: is a NumPy .npy file; save tensors with safetensors instead")
    if header_len > _MAX_HEADER or 8 + header_len > size:
        raise InputError(
            f"{path}: not a safetensors file (header length {header_len} does not fit in "
            f"{size} bytes; truncated or another format)"
        )
    raise InputError(f"{path}: not a safetensors file (the header is not JSON)")


def _read_header(path: Path) -> tuple[list[str], dict[str, str]]:
    from safetensors import safe_open

    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # SafetensorError has no stable import path across versions
        raise InputError(f"{path}: not a valid safetensors file ({first_line(exc)})") from None
    return keys, metadata


def _natural(name: str) -> list[int | str]:
    """Sort key that puts layer.2 before layer.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _split_key(key: str) -> tuple[str, str]:
    prefix, _, leaf = key.rpartition(".")
    return prefix, leaf.lower()


def plan_file(
    path: str | Path,
    case_glob: str | None = None,
    overrides: Settings | None = None,
) -> list[CasePlan]:
    """Group a file's tensors into cases and resolve each case's settings, reading only the header."""
    path = Path(path)
    keys, metadata = _read_header(path)
    overrides = overrides or Settings()

    grouped: dict[str, dict[str, str]] = {}
    ignored: dict[str, list[str]] = {}
    for key in keys:
        prefix, leaf = _split_key(key)
        name = prefix or path.stem
        role = ALIAS_TO_ROLE.get(leaf)
        if role is None:
            ignored.setdefault(name, []).append(key)
            continue
        roles = grouped.setdefault(name, {})
        if role in roles:
            raise InputError(
                f"{path}: case {name!r} has two tensors for role {role}: {roles[role]!r} and {key!r}"
            )
        roles[role] = key
    if not grouped:
        shown = ", ".join(keys[:8]) + (" …" if len(keys) > 8 else "") if keys else "none"
        raise InputError(
            f"{path}: no recognisable tensors (expected names like q, k, v, mask, weights, "
            f"scores, out, optionally prefixed by a case name); found: {shown}"
        )

    order = {name: i for i, name in enumerate(metadata.get("case_order", "").splitlines())}
    grouped = dict(
        sorted(grouped.items(), key=lambda item: (order.get(item[0], len(order)), _natural(item[0])))
    )
    global_meta = {k: v for k, v in metadata.items() if k in SETTING_KEYS}
    base = settings_from_strings(global_meta, str(path))
    plans = []
    for name, roles in grouped.items():
        if case_glob and not fnmatch.fnmatchcase(name, case_glob):
            continue
        has_qkv = all(r in roles for r in ("q", "k", "v"))
        if not has_qkv and not ({"weights", "scores"} & roles.keys()):
            missing = [r for r in ("q", "k", "v") if r not in roles]
            raise InputError(
                f"{path}: case {name!r} has {', '.join(sorted(roles))} but no "
                f"{', '.join(missing)}; a case needs q, k and v, or weights or scores"
            )
        case_meta = {
            key[len(name) + 1 :]: value
            for key, value in metadata.items()
            if key.startswith(name + ".") and key[len(name) + 1 :] in SETTING_KEYS
        }
        from_meta = settings_from_strings(case_meta, f"{path} case {name!r}").merged_over(base)
        settings = overrides.merged_over(from_meta)
        origins = {}
        for key in SETTING_KEYS:
            if getattr(overrides, key) is not None:
                origins[key] = "flag"
            elif getattr(from_meta, key) is not None:
                origins[key] = "metadata"
        notes = [f"ignored tensor {key!r} (not a known role)" for key in ignored.get(name, [])]
        notes += [line for line in metadata.get(f"{name}.notes", "").splitlines() if line.strip()]
        tokens = tokens_from_metadata(metadata.get(f"{name}.tokens") or metadata.get("tokens"))
        locations = locations_from_metadata(metadata.get(f"{name}.locations"))
        plans.append(CasePlan(name, path, roles, settings, origins, notes, tokens, locations))
    return plans


def load_case(plan: CasePlan, handle: Any = None) -> Case:
    """One case's tensors, from ``handle`` (an open ``safe_open`` of ``plan.file``) or by
    opening the file."""
    handle = handle if handle is not None else _open(plan.file)
    try:
        tensors = {role: handle.get_tensor(key) for role, key in plan.keys.items()}
    except Exception as exc:
        raise InputError(f"{plan.file}: tensor data cannot be read ({first_line(exc)})") from None
    return Case(
        name=plan.name,
        file=str(plan.file),
        tensors=tensors,
        keys=dict(plan.keys),
        settings=plan.settings,
        origins=dict(plan.origins),
        notes=list(plan.notes),
        tokens=plan.tokens,
        locations=dict(plan.locations),
    )


# A handle maps its file: pages it has read stay resident until it closes, so a handle is
# reopened after this many bytes, to keep memory flat over a large file.
REOPEN_AFTER_BYTES = 4 << 20


def read_cases(plans: Iterable[CasePlan]) -> Iterator[tuple[CasePlan, Case]]:
    """Each plan with its case, read when its turn comes. A file is opened once for many
    cases: opening parses the whole header, and once per case a file of 1,000 cases took
    quadratic time."""
    for file, group in itertools.groupby(plans, key=lambda plan: plan.file):
        handle, read = None, 0
        for plan in group:
            if handle is None or read > REOPEN_AFTER_BYTES:
                handle, read = None, 0  # the last reference: the mapping closes here
                handle = _open(file)
            case = load_case(plan, handle)
            read += sum(t.nbytes for t in case.tensors.values())
            yield plan, case
        del handle


def _open(file: Path) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt")
    except Exception as exc:
        raise InputError(f"{file}: tensor data cannot be read ({first_line(exc)})") from None


def plan_cases(
    paths: list[str | Path],
    case_glob: str | None = None,
    overrides: Settings | None = None,
) -> list[CasePlan]:
    """Every file's header, checked before any case runs: bad input fails before any output."""
    plans = [plan for path in paths for plan in plan_file(path, case_glob, overrides)]
    if case_glob and not plans:
        raise InputError(f"no case matches --case {case_glob!r} in {', '.join(map(str, paths))}")
    return plans


def iter_cases(
    paths: list[str | Path],
    case_glob: str | None = None,
    overrides: Settings | None = None,
) -> Iterator[Case]:
    """Cases one by one, each read only when its turn comes, so memory does not grow with
    the number of files or cases."""
    for _, case in read_cases(plan_cases(paths, case_glob, overrides)):
        yield case
