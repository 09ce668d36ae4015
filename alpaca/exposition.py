"""Metric families as plain rows, and their Prometheus text exposition written in slices.

:class:`Family` is what :mod:`alpaca.metrics` reads out of the engine: a name, a type, a help
text, label names and rows ``(label values, value)`` that may be produced lazily (a histogram
row's value is ``(cumulative (le, count) pairs, sum)``). Two consumers:

* :func:`to_metric` turns one into a prometheus_client family, for a ``CollectorRegistry``
  (``generate_latest``, the tests, anything that speaks the client's API);
* :func:`render_text` writes the text format 0.0.4, byte for byte what ``generate_latest``
  writes for the same families, as a series of chunks of at most ``lines`` lines each. The
  caller serves each chunk and gives the hub a turn between them, so a scrape of 10,000 peers
  never holds the packet path for longer than one chunk takes to write.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString as _untyped_go_float

#: Lines per chunk of :func:`render_text` (about 100 KB, 1-2 ms of work).
CHUNK_LINES = 2000

Row = tuple[Sequence[str], Any]


def _go_float(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's float syntax: ``1.0``, ``+Inf``)."""
    text: str = _untyped_go_float(value)  # type: ignore[no-untyped-call]
    return text


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family. ``name`` is without ``_total`` for a counter; ``rows`` may be a
    generator (read once)."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    doc: str
    labels: Sequence[str]
    rows: Iterable[Row]


def single(name: str, kind: str, doc: str, value: float) -> Family:
    """A family of one unlabelled sample."""
    return Family(name, kind, doc, (), [((), value)])


_METRIC_CLASSES: dict[str, Any] = {
    "counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily,
}


def to_metric(family: Family) -> Metric:
    """The prometheus_client family with the same samples (reads ``family.rows``)."""
    metric = _METRIC_CLASSES[family.kind](family.name, family.doc, labels=list(family.labels))
    for labels, value in family.rows:
        if family.kind == "histogram":
            metric.add_metric(list(labels), value[0], value[1])
        else:
            metric.add_metric(list(labels), value)
    made: Metric = metric
    return made


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Labels:
    """Writes ``{name="value",...}`` with the names sorted, as prometheus_client does; each
    set of values is written once per scrape (a peer's labels recur in every family)."""

    __slots__ = ("names", "order", "written")

    def __init__(self, names: Sequence[str]) -> None:
        self.names = names
        self.order = sorted(range(len(names)), key=names.__getitem__)
        self.written: dict[tuple[str, ...], str] = {}

    def text(self, values: Sequence[str]) -> str:
        key = tuple(values)
        text = self.written.get(key)
        if text is None:
            text = self.written[key] = self.build(values)
        return text

    def build(self, values: Sequence[str]) -> str:
        """The text, not kept (values that do not recur, e.g. with a bucket's ``le``)."""
        names = self.names
        pairs = ",".join(f'{names[i]}="{_escape_label(values[i])}"' for i in self.order)
        return "{" + pairs + "}" if pairs else ""


class _Writer:
    """The lines of one scrape; owns the label texts it wrote (per set of label names)."""

    def __init__(self) -> None:
        self.labels: dict[tuple[str, ...], _Labels] = {}

    def labels_of(self, names: Sequence[str]) -> _Labels:
        key = tuple(names)
        found = self.labels.get(key)
        if found is None:
            found = self.labels[key] = _Labels(key)
        return found

    def lines(self, family: Family) -> Iterator[str]:
        name = f"{family.name}_total" if family.kind == "counter" else family.name
        doc = family.doc.replace("\\", r"\\").replace("\n", r"\n")
        yield f"# HELP {name} {doc}\n# TYPE {name} {family.kind}\n"
        labels_of = self.labels_of(family.labels)
        if family.kind != "histogram":
            for labels, value in family.rows:
                yield f"{name}{labels_of.text(labels)} {_go_float(value)}\n"
            return
        buckets_of = self.labels_of((*family.labels, "le"))
        for labels, (buckets, total) in family.rows:
            for le, count in buckets:
                yield f"{name}_bucket{buckets_of.build((*labels, le))} {_go_float(count)}\n"
            label_text = labels_of.text(labels)
            yield f"{name}_count{label_text} {_go_float(buckets[-1][1])}\n"
            yield f"{name}_sum{label_text} {_go_float(total)}\n"


def render_text(families: Iterable[Family | None], lines: int = CHUNK_LINES) -> Iterator[str]:
    """The text exposition of ``families`` in chunks of at most ``lines`` lines (the two
    header lines of a family count as one). A None among the families ends the chunk there
    (an empty one if need be): the producer's mark after a long piece of its own work."""
    chunk: list[str] = []
    writer = _Writer()
    for family in families:
        if family is None:
            yield "".join(chunk)
            chunk.clear()
            continue
        for line in writer.lines(family):
            chunk.append(line)
            if len(chunk) >= lines:
                yield "".join(chunk)
                chunk.clear()
    if chunk:
        yield "".join(chunk)
