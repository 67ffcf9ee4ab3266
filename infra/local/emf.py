"""Reading the EMF metric lines a process wrote (mixed with its JSON log lines): used by
the tests and by `make soak`'s books."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


@dataclass(frozen=True)
class Point:
    """One metric value from one EMF line, with that line's dimension sets and fields."""

    name: str
    value: float
    unit: str
    namespace: str
    dimension_sets: tuple[tuple[str, ...], ...]
    fields: dict[str, Any]  # every top-level key of the line: dimension values and metadata

    def get(self, key: str) -> Any:
        return self.fields.get(key)


def parse(lines: Iterable[str]) -> list[Point]:
    points = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        for directive in doc.get("_aws", {}).get("CloudWatchMetrics", []):
            dims = tuple(tuple(d) for d in directive["Dimensions"])
            for metric in directive["Metrics"]:
                values = doc[metric["Name"]]
                for value in values if isinstance(values, list) else [values]:
                    points.append(Point(metric["Name"], float(value), metric["Unit"], directive["Namespace"],
                                        dims, doc))
    return points


def read(*paths: Path) -> list[Point]:
    out: list[Point] = []
    for path in paths:
        if path.exists():
            out.extend(parse(path.read_text(errors="replace").splitlines()))
    return out


def named(points: Iterable[Point], name: str, **fields: Any) -> list[Point]:
    return [p for p in points if p.name == name and all(p.get(k) == v for k, v in fields.items())]
