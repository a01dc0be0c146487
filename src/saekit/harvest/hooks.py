"""Hook names and hook patterns: what `--hook` and `--gradients` of `sae harvest` take.

A pattern names many hooks at once. It is matched part by part, the parts of a hook name being
separated by dots (`blocks`, `7`, `hook_mlp_out`), so a pattern matches only names with as many
parts as it has:

- `*`, `?` and `[...]` match within one part, as in shell globs: `blocks.*.hook_mlp_out` is
  every layer's MLP output (and not `blocks.7.mlp.hook_out`, which has one part more);
- `A-B`, two whole numbers, is a range of them, both ends included: `blocks.0-3.hook_resid_mid`.
  Every number of the range must give a hook, so a range past the model's last layer is refused.

A pattern's hooks are in natural order (layer 2 before layer 10) and take the pattern's place
among the options; names without pattern syntax stay where they are given. A hook named twice,
by two patterns or a pattern and a name, is refused; so is a pattern that matches nothing, with
the closest patterns the names allow. Stores record the hook names, never the patterns.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Sequence

from saekit.base.errors import SaekitError

RANGE = re.compile(r"^(\d+)-(\d+)$")
GLOB = re.compile(r"[*?\[]")


def is_pattern(text: str) -> bool:
    """Whether `text` holds pattern syntax (a glob character or a range part)."""
    return bool(GLOB.search(text)) or any(RANGE.match(part) for part in text.split("."))


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders the numbers inside names by value (blocks.2 before blocks.10)."""
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", name)]


def resolve(
    patterns: Sequence[str],
    names: Sequence[str],
    *,
    option: str,
    among: str,
    strict: bool = True,
) -> list[str]:
    """The names that `patterns` (values of `option`) give, from `names`, in order.

    `among` says what `names` are, for messages ("model gpt2's hooks"). With `strict=False`
    names without pattern syntax are kept as given, for the caller to check (the model's check
    names the closest hooks and switched-off ones); with `strict=True` they must be in `names`.
    """
    chosen: dict[str, str] = {}  # name -> the option value that gave it
    for pattern in patterns:
        if is_pattern(pattern):
            found = _matches(pattern, names, option, among)
        elif strict and pattern not in names:
            close = difflib.get_close_matches(pattern, list(names), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SaekitError(f"{option} '{pattern}' is none of {among} ({_listed(names)}){hint}")
        else:
            found = [pattern]
        for name in found:
            if name in chosen:
                first = chosen[name]
                by = (
                    f"{option} '{first}' twice"
                    if first == pattern
                    else f"{option} '{first}' and {option} '{pattern}'"
                )
                raise SaekitError(f"a hook is given twice: {name} (by {by}); name each hook once")
            chosen[name] = pattern
    return list(chosen)


def _matches(pattern: str, names: Sequence[str], option: str, among: str) -> list[str]:
    """Every name `pattern` matches, in natural order; refuse a pattern that matches nothing,
    and a range any number of which matches nothing."""
    parts = pattern.split(".")
    for part in parts:
        if (bounds := RANGE.match(part)) and int(bounds[1]) > int(bounds[2]):
            raise SaekitError(
                f"{option} '{pattern}': the range {part} runs backwards; write "
                f"{bounds[2]}-{bounds[1]}"
            )
    found = sorted(
        (name for name in names if _match_parts(parts, name.split("."))),
        key=natural_key,
    )
    if not found:
        hint = _suggestion(pattern, names)
        raise SaekitError(f"{option} '{pattern}' matches none of {among}{hint}")
    for index, part in enumerate(parts):
        if bounds := RANGE.match(part):
            seen = {int(name.split(".")[index]) for name in found}
            missing = [n for n in range(int(bounds[1]), int(bounds[2]) + 1) if n not in seen]
            if missing:
                example = ".".join([*parts[:index], str(missing[0]), *parts[index + 1 :]])
                raise SaekitError(
                    f"{option} '{pattern}' matches nothing for {_numbers(missing)} of the range "
                    f"{part}: there is no {example} among {among}"
                )
    return found


def _match_parts(parts: list[str], name_parts: list[str]) -> bool:
    if len(parts) != len(name_parts):
        return False
    for part, name_part in zip(parts, name_parts, strict=True):
        if bounds := RANGE.match(part):
            if not (
                name_part.isdigit()
                and str(int(name_part)) == name_part
                and int(bounds[1]) <= int(name_part) <= int(bounds[2])
            ):
                return False
        elif not fnmatch.fnmatchcase(name_part, part):
            return False
    return True


def _suggestion(pattern: str, names: Sequence[str]) -> str:
    """'; did you mean P?' with the closest patterns the names allow, the pattern's own ranges,
    numbers and globs kept in the parts where a suggestion has a layer number."""

    def general(parts: list[str]) -> str:
        return ".".join("*" if part.isdigit() or is_pattern(part) else part for part in parts)

    templates = sorted({general(name.split(".")) for name in names})
    parts = pattern.split(".")
    close = difflib.get_close_matches(general(parts), templates, n=3, cutoff=0.6)
    suggestions = []
    for template in close:
        shape = template.split(".")
        if len(shape) == len(parts):
            pairs = zip(shape, parts, strict=True)
            shape = [p if t == "*" and general([p]) == "*" else t for t, p in pairs]
        suggestions.append(".".join(shape))
    return f"; did you mean {', '.join(suggestions)}?" if suggestions else ""


def _numbers(values: list[int]) -> str:
    """[2, 3, 4, 7] -> '2-4, 7'."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _listed(names: Sequence[str], most: int = 4) -> str:
    """The first few names, and how many there are."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown}, … {len(names)} in all"
