"""Tables for people, JSON and YAML for tools."""

from __future__ import annotations

import json
import sys


def table(headers: list[str], rows: list[list], out=None) -> None:
    out = out or sys.stdout
    cells = [[str(c) if c not in (None, "") else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def emit(data, fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    elif fmt == "yaml":
        import yaml

        out.write(yaml.safe_dump(data, sort_keys=False))
    else:
        raise ValueError(fmt)


def manifest_list(items: list[dict]) -> dict:
    """calicoctl's shape for several resources of one kind."""
    kind = items[0]["kind"] + "List" if items else "List"
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "items": items}
