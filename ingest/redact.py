"""What of a rejected input its dead letter may keep: nothing that names or reaches a buyer.

A rejection is redacted when it is made (``Adapter.reject``), so the input's personal data is
not even held while the rejection waits for Redis. Two ways, by how much a format says:

- :func:`allowed_json` keeps the fields of an allow-list and nothing else, re-serialised; a body
  that is not a JSON object keeps only its length and hash (:func:`opaque`). Used where the body is
  known to carry personal data (a Shopify order: the customer's name, email, phone, addresses,
  note). An allow-list, never a block-list: a field the platform adds later is dropped until it is
  listed here.
- :func:`masked` keeps the frame but masks every run of 9 or more digits (separators allowed
  between them, which covers every Vietnamese mobile number, 10 or 11 digits written as buyers
  write them) but the value of a count or money field, and every email address. Used for the
  chat and native frames, whose fields are ids, codes and amounts, and whose free text (a
  comment, a chat name) may hold a phone number.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Final

import orjson

from ingest.model import RAW_BYTES

Spec = Mapping[str, "Spec | None"]
"""An allow-list: a field kept as a scalar (None), or an object (or list of objects) kept by its
own allow-list."""

MARK: Final = "_redacted"
"""The field of a redacted body that gives the original's size and hash."""
DELIVERY: Final = "_delivery"
"""The field of a redacted body with what its transport said of it (a webhook's topic, event id)."""
DIGIT: Final = "#"
STRING_CHARS: Final = 128
"""A kept string value is cut to this: an allow-listed field holds ids, codes and amounts."""

_DIGIT_RUN = re.compile(r"\+?\d(?:[\s.\-()/]{0,3}\d){8,}")
_NUMERIC_FIELD = re.compile(r'"(?:count|amount|price|qty|quantity|grams)"\s*:\s*"?\Z')
"""The JSON fields of counts and money (native, chat relay, refused events): a large value there
is what an ``out_of_range`` letter is about. Kept only when written as a plain number that no
phone number looks like (:data:`_PLAIN`)."""
_PLAIN = re.compile(r"(?!0|84)\d+(?:\.\d+)?")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
"""What an email address looks like: the addresses :func:`masked_text` masks (it finds them by
their "@", see :func:`_email_spans`, not with this pattern, whose search takes time quadratic in a
long run of letters)."""
_LOCAL = re.compile(r"[\w.+-]+")
_DOMAIN = re.compile(r"[\w-]+(?:\.[\w-]+)+")
_SCALARS = (str, int, float, bool)
_MARGIN = 128
"""Bytes read past the cut of a frame before masking, so a number cut in two is masked whole."""


def digest(raw: bytes) -> dict[str, object]:
    """The length and BLAKE2b-128 hash of ``raw``: to match a dead letter with a platform's
    delivery log, not to read it."""
    return {"bytes": len(raw), "blake2b": hashlib.blake2b(raw, digest_size=16).hexdigest()}


def opaque(raw: bytes, context: Mapping[str, object] | None = None) -> bytes:
    """Nothing of ``raw`` but its length and hash (and ``context``, what the transport said of
    it, under ``_delivery``)."""
    found: dict[str, object] = {MARK: {**digest(raw), "kept": "nothing"}}
    if context is not None:
        found[DELIVERY] = dict(context)
    return orjson.dumps(found)


def allowed_json(raw: bytes, spec: Spec, context: Mapping[str, object] | None = None) -> bytes:
    """The fields of the JSON object ``raw`` that ``spec`` lists, after the original's length and
    hash (under :data:`MARK`) and ``context`` (under ``_delivery``), which come first so that
    they survive the cut to ``RAW_BYTES``; :func:`opaque` when ``raw`` is not a JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return opaque(raw, context)
    if not isinstance(body, dict):
        return opaque(raw, context)
    kept: dict[str, object] = {MARK: {**digest(raw), "kept": "allow-listed fields"}}
    if context is not None:
        kept[DELIVERY] = dict(context)
    kept.update(_keep(body, spec))
    return _fitted(kept)


def _fitted(kept: dict[str, object]) -> bytes:
    """``kept`` serialised in at most ``RAW_BYTES``: its longest top-level lists (an order's line
    items) halved until it fits, with how many items each kept under ``_redacted.listed``, so
    that the letter is still JSON."""
    found = orjson.dumps(kept)
    listed: dict[str, int] = {}
    while len(found) > RAW_BYTES:
        lists = [(len(v), k) for k, v in kept.items() if isinstance(v, list) and v]
        if not lists:
            return found[:RAW_BYTES]
        _, name = max(lists)
        items = kept[name]
        assert isinstance(items, list)
        kept[name] = items[: len(items) // 2]
        listed[name] = len(items) // 2
        mark = kept[MARK]
        assert isinstance(mark, dict)
        mark["listed"] = listed
        found = orjson.dumps(kept)
    return found


def _keep(obj: dict[str, object], spec: Spec) -> dict[str, object]:
    kept: dict[str, object] = {}
    for name, sub in spec.items():
        if name not in obj:
            continue
        value = obj[name]
        if sub is None:
            if value is None or isinstance(value, _SCALARS):
                kept[name] = value[:STRING_CHARS] if isinstance(value, str) else value
        elif isinstance(value, dict):
            kept[name] = _keep(value, sub)
        elif isinstance(value, list):
            kept[name] = [_keep(item, sub) for item in value if isinstance(item, dict)]
    return kept


def masked(raw: bytes) -> bytes:
    """``raw`` (its first :data:`~ingest.model.RAW_BYTES`) with every run of 9 or more digits
    and every email address masked, digit by digit and character by character. Bytes that are
    not UTF-8 are kept as they are."""
    text = raw[: RAW_BYTES + _MARGIN].decode("utf-8", "surrogateescape")
    return masked_text(text).encode("utf-8", "surrogateescape")[:RAW_BYTES]


def masked_text(text: str) -> str:
    """``text`` with what :func:`masked` masks masked: for a rejection's detail too, which may
    quote a value of the input (msgspec quotes an invalid tag or literal)."""
    text = _DIGIT_RUN.sub(_mask_run, text)
    spans = _email_spans(text)
    if not spans:
        return text
    parts, end = [], 0
    for start, stop in spans:
        parts += [text[end:start], "*" * (stop - start)]
        end = stop
    parts.append(text[end:])
    return "".join(parts)


def _email_spans(text: str) -> list[tuple[int, int]]:
    """Where :data:`_EMAIL` finds its matches in ``text`` (``_EMAIL.finditer``'s spans), in time
    linear in the text: from each "@", its local part backwards (up to the previous "@" or match)
    and its domain forwards. A hostile frame of 8 KiB of letters costs ``_EMAIL.finditer`` a
    start at every letter, each reading to the end of the run."""
    spans: list[tuple[int, int]] = []
    end = 0  # the end of the last match, or just after the last "@"
    at = text.find("@")
    while at >= 0:
        local = _LOCAL.match(text[end:at][::-1])
        domain = _DOMAIN.match(text, at + 1)
        if local is not None and domain is not None:
            spans.append((at - local.end(), domain.end()))
            end = domain.end()
        else:
            end = at + 1
        at = text.find("@", end)
    return spans


def _mask_run(found: re.Match[str]) -> str:
    before = found.string[max(0, found.start() - 32) : found.start()]
    if _PLAIN.fullmatch(found.group()) and _NUMERIC_FIELD.search(before):
        return found.group()
    return re.sub(r"\d", DIGIT, found.group())
