"""Plivo XML as the fake Plivo reads it: the documents, their elements, their attributes."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

HEADER_PAIR = re.compile(r"[A-Za-z0-9]+=[A-Za-z0-9]*")
ELEMENTS = {
    "Stream",
    "Speak",
    "Play",
    "Wait",
    "Hangup",
    "Dial",
    "Redirect",
    "PreAnswer",
    "GetDigits",
    "GetInput",
    "Record",
    "Conference",
    "DTMF",
    "MultiPartyCall",
    "Message",
}


class XmlError(Exception):
    """A document could not be fetched or run; the call ends with an error."""


@dataclass
class Doc:
    text: str
    elements: list[ET.Element]


def parse(text: str) -> Doc:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmlError(f"invalid XML: {exc}") from None
    if root.tag != "Response":
        raise XmlError(f"the root element must be <Response>, got <{root.tag}>")
    for el in root:
        if el.tag not in ELEMENTS:
            raise XmlError(f"unknown element <{el.tag}>")
    return Doc(text, list(root))


def attr_bool(el: ET.Element, name: str) -> bool:
    value = el.get(name, "false").lower()
    if value not in ("true", "false"):
        raise XmlError(f"<{el.tag} {name}={value!r}> must be true or false")
    return value == "true"


def attr_seconds(el: ET.Element, name: str, default: float) -> float:
    raw = el.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise XmlError(f"<{el.tag} {name}={raw!r}> is not a number") from None
    if value <= 0:
        raise XmlError(f"<{el.tag} {name}={raw!r}> must be positive")
    return value
