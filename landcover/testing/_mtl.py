"""Writing Collection 2 MTL metadata in its three encodings (ODL txt, xml, json).

An MTL is held as ``{group: [(key, text, quoted), ...]}``: ``text`` is the value
exactly as USGS prints it, ``quoted`` says whether ODL puts it in double quotes
(strings) or leaves it bare (numbers, dates). The XML and JSON encodings carry
the same text (JSON values are all strings, as in real products).
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import escape

__all__ = ["Mtl", "Entry", "to_odl", "to_xml", "to_json", "write_mtl"]

Entry = tuple[str, str, bool]
Mtl = dict[str, list[Entry]]

ROOT = "LANDSAT_METADATA_FILE"


def to_odl(mtl: Mtl) -> str:
    """ODL text: ``GROUP = X`` ... ``END_GROUP = X``, final ``END``."""
    lines = [f"GROUP = {ROOT}"]
    for group, entries in mtl.items():
        lines.append(f"  GROUP = {group}")
        for k, text, quoted in entries:
            value = f'"{text}"' if quoted else text
            lines.append(f"    {k} = {value}")
        lines.append(f"  END_GROUP = {group}")
    lines.append(f"END_GROUP = {ROOT}")
    lines.append("END")
    return "\n".join(lines) + "\n"


def to_xml(mtl: Mtl) -> str:
    """XML with root ``LANDSAT_METADATA_FILE`` and one element per group."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f"<{ROOT}>"]
    for group, entries in mtl.items():
        lines.append(f"  <{group}>")
        for k, text, _ in entries:
            lines.append(f"    <{k}>{escape(text)}</{k}>")
        lines.append(f"  </{group}>")
    lines.append(f"</{ROOT}>")
    return "\n".join(lines) + "\n"


def to_json(mtl: Mtl) -> str:
    """JSON ``{"LANDSAT_METADATA_FILE": {group: {key: text}}}``."""
    doc = {ROOT: {group: {k: text for k, text, _ in entries} for group, entries in mtl.items()}}
    return json.dumps(doc)


def write_mtl(mtl: Mtl, directory: Path, product_id: str, formats: tuple[str, ...]) -> list[Path]:
    """Write ``<product_id>_MTL.<fmt>`` for each format in ``formats`` (txt, xml, json)."""
    encoders = {"txt": to_odl, "xml": to_xml, "json": to_json}
    out = []
    for fmt in formats:
        path = directory / f"{product_id}_MTL.{fmt}"
        path.write_text(encoders[fmt](mtl), encoding="utf-8")
        out.append(path)
    return out
