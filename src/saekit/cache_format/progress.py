"""How far each shard of a store has been committed."""

from __future__ import annotations

from typing import Any

import zarr

from saekit.cache_format.location import read_json, write_json
from saekit.cache_format.schema import StoreSpec


def progress_key(shard: int) -> str:
    """The key of a shard's commit record in a sharded store."""
    return f"progress/shard-{shard:05d}.json"


class ShardProgress:
    """Where a shard's committed rows end, and whether the shard is complete.

    An unsharded store keeps this in the root attributes (`n_rows_committed`, `complete`); each
    shard of a sharded store keeps it in its own small JSON object `progress/shard-00003.json`,
    so that writers never write the same object.
    """

    def __init__(self, group: zarr.Group, spec: StoreSpec, shard: int) -> None:
        self.group, self.spec, self.shard = group, spec, shard
        self.key = progress_key(shard)

    @property
    def sharded(self) -> bool:
        return self.spec.layout.shards > 1

    def load(self) -> tuple[int, bool]:
        """(end of the committed rows, complete)."""
        if not self.sharded:
            return int(self.group.attrs["n_rows_committed"]), bool(self.group.attrs["complete"])
        record = read_json(self.group.store, self.key)
        if record is None:
            return self.spec.layout.shard_rows(self.shard)[0], False
        return int(record["committed_until"]), bool(record["complete"])

    def save(self, committed_until: int, complete: bool = False) -> None:
        if self.sharded:
            write_json(
                self.group.store,
                self.key,
                {"committed_until": committed_until, "complete": complete},
            )
        else:
            self.group.attrs.update({"n_rows_committed": committed_until, "complete": complete})


def committed_ranges(attrs: dict[str, Any], store: Any, spec: StoreSpec) -> list[tuple[int, int]]:
    """Row ranges whose every row is committed, in order."""
    if spec.layout.shards == 1 or attrs.get("complete"):
        n = int(attrs["n_rows_committed"])
        return [(0, n)] if n else []
    ranges: list[tuple[int, int]] = []
    for shard in range(spec.layout.shards):
        start, _ = spec.layout.shard_rows(shard)
        record = read_json(store, progress_key(shard))
        stop = int(record["committed_until"]) if record else start
        if stop > start:
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], stop)
            else:
                ranges.append((start, stop))
    return ranges
