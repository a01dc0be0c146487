"""Compare two recipe report.json files number by number: every row (matched by recipe, label
and run), every claim and finding. Settings, times, versions, cost estimates and the rows' own
records of their training settings are left out (a refactor may record them differently).

    python experiments/compare_recipe_reports.py OLD/report.json NEW/report.json
"""

import json
import math
import sys

IGNORED = {"created", "timings_s", "saekit_version", "estimate", "settings", "training", "hook"}


def walk(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in IGNORED:
                continue
            if key not in a or key not in b:
                out.append((path + "/" + key, "only in " + ("new" if key not in a else "old")))
                continue
            walk(a[key], b[key], path + "/" + key, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append((path, f"length {len(a)} vs {len(b)}"))
        for i, (x, y) in enumerate(zip(a, b, strict=False)):  # a length difference is listed
            walk(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    elif a != b:
        out.append((path, f"{a!r} vs {b!r}"))


def rows_by_label(report):
    return {
        name: {f"{row['label']}|{row['run']}": row for row in recipe["rows"]}
        for name, recipe in report["recipes"].items()
    }


def main() -> None:
    with open(sys.argv[1]) as old_file, open(sys.argv[2]) as new_file:
        old, new = json.load(old_file), json.load(new_file)
    diffs: list[tuple[str, str]] = []
    walk(rows_by_label(old), rows_by_label(new), "rows", diffs)
    for name in old["recipes"]:
        for key in ("claims", "findings", "figures", "title", "paper"):
            walk(old["recipes"][name][key], new["recipes"][name][key], f"{name}/{key}", diffs)
    walk(old["claims"], new["claims"], "claims", diffs)
    rows = sum(len(recipe["rows"]) for recipe in old["recipes"].values())
    print(f"{rows} rows, {len(old['claims'])} claims compared: {len(diffs)} differences")
    for path, what in diffs[:60]:
        print(f"  {path}: {what}")


if __name__ == "__main__":
    main()
