"""ER7, HL7 v2's text encoding: segments, fields, components, repetitions, escape sequences.

Real RIS traffic is messy: Z-segments, versions that do not match the structure, line breaks
inside fields, LF instead of CR. So messages are read with a small splitter, strict where it
matters (MSH first, valid encoding characters: AR otherwise): segments by CR/LF/CRLF, a line
that is not a segment joined to the one before, fields/components/repetitions by the
delimiters the message declares in MSH-1/MSH-2, escape sequences decoded on reading. Why not
hl7apy or python-hl7: docs/performance.md ("ER7 codec").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from triage.errors import HL7ParseError

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
LINE_BREAKS = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Delimiters:
    """The message's encoding characters (MSH-1 and MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, line: str, *, strict: bool = True) -> Delimiters:
        """Read the delimiters from an MSH line. ``strict`` rejects invalid ones."""
        if len(line) < 4 or not line.startswith("MSH"):
            raise HL7ParseError("message does not start with an MSH segment", location="MSH")
        fs = line[3]
        end = line.find(fs, 4)
        enc = line[4:end] if end >= 0 else line[4:]
        known = _KNOWN_DELIMITERS.get(fs + enc)  # valid ones seen before (nearly every message)
        if known is not None:
            return known
        if strict:
            chars = fs + enc
            why = ""
            if not 2 <= len(enc) <= 5:
                why = f"MSH-2 has {len(enc)} characters (2-5 expected, usually ^~\\&)"
            elif len(set(chars)) != len(chars):
                why = "a delimiter is used twice in MSH-1/MSH-2 (each must be distinct)"
            elif any(c.isalnum() or c.isspace() for c in chars):
                why = "a letter, digit or space among the delimiters of MSH-1/MSH-2"
            if why:
                raise HL7ParseError(
                    f"invalid encoding characters: {why}", hl7_code=102, location="MSH^1^2"
                )
        padded = (enc + "\0\0\0\0")[:4]
        found = cls(
            field=fs,
            component=padded[0] if padded[0] != "\0" else "^",
            repetition=padded[1] if padded[1] != "\0" else "~",
            escape=padded[2] if padded[2] != "\0" else "",
            subcomponent=padded[3] if padded[3] != "\0" else "&",
        )
        if strict and len(_KNOWN_DELIMITERS) < 64:
            _KNOWN_DELIMITERS[fs + enc] = found
        return found

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_DELIMITERS = Delimiters()
# MSH-1 + MSH-2 -> their Delimiters, for encoding characters already checked (strict).
_KNOWN_DELIMITERS: dict[str, Delimiters] = {}


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Decode HL7 escape sequences: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\."""
    e = d.escape
    if not e or e not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c != e:
            out.append(c)
            i += 1
            continue
        j = value.find(e, i + 1)
        if j < 0:  # unterminated: keep literally
            out.append(value[i:])
            break
        seq = value[i + 1 : j]
        i = j + 1
        if seq == "F":
            out.append(d.field)
        elif seq == "S":
            out.append(d.component)
        elif seq == "T":
            out.append(d.subcomponent)
        elif seq == "R":
            out.append(d.repetition)
        elif seq == "E":
            out.append(e)
        elif seq == ".br":
            out.append("\n")
        elif seq.startswith("X") and len(seq) % 2 == 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
            except ValueError:
                out.append(e + seq + e)
        elif seq in ("H", "N") or seq.startswith((".", "C", "M", "Z")):
            continue  # highlighting, formatting, character set switches: dropped
        else:
            out.append(e + seq + e)
    return "".join(out)


# Characters that escape() changes with the default delimiters (most values have none).
_PLAIN = re.compile(r"[^\\|^&~\r\n\x0b\x1c]*")


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Encode text for an HL7 field: delimiters become escape sequences, line breaks \\.br\\."""
    if d is DEFAULT_DELIMITERS and _PLAIN.fullmatch(value):
        return value
    e = d.escape or "\\"
    out: list[str] = []
    table = {
        e: f"{e}E{e}",
        d.field: f"{e}F{e}",
        d.component: f"{e}S{e}",
        d.subcomponent: f"{e}T{e}",
        d.repetition: f"{e}R{e}",
    }
    text = LINE_BREAKS.sub("\n", value)
    for c in text:
        if c in table:
            out.append(table[c])
        elif c == "\n":
            out.append(f"{e}.br{e}")
        elif c in "\x0b\x1c":
            continue  # never let MLLP block characters into a message
        else:
            out.append(c)
    return "".join(out)


@dataclass(slots=True)
class Segment:
    """One segment; ``fields[n]`` is field n (for MSH too: ``fields[1]`` is MSH-1)."""

    name: str
    fields: list[str]
    delimiters: Delimiters

    def raw(self, n: int) -> str:
        """Field ``n`` as on the wire (all repetitions, escapes not decoded)."""
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def get(self, n: int, component: int = 1, subcomponent: int = 1) -> str:
        """Component (1-based) of the first repetition of field ``n``, unescaped and stripped."""
        fields = self.fields
        if not 0 < n < len(fields):
            return ""
        value = fields[n]
        if not value or (n <= 2 and self.name == "MSH"):
            return value
        d = self.delimiters
        if d.repetition in value:
            value = value.split(d.repetition, 1)[0]
        # _part() twice, written out: this runs some 25 times for every order message
        if d.component in value:
            parts = value.split(d.component)
            if component > len(parts):
                return ""
            value = parts[component - 1]
        elif component > 1:
            return ""
        if d.subcomponent in value:
            parts = value.split(d.subcomponent)
            if subcomponent > len(parts):
                return ""
            value = parts[subcomponent - 1]
        elif subcomponent > 1:
            return ""
        if d.escape and d.escape in value:
            value = unescape(value, d)
        return value.strip()

    def components(self, n: int) -> str:
        """First repetition of field ``n``, components unescaped and joined with ``^``;
        trailing empty components removed (for names, order numbers, locations)."""
        d = self.delimiters
        value = self.raw(n).split(d.repetition, 1)[0]
        parts = [unescape(p, d).strip() for p in value.split(d.component)]
        while parts and not parts[-1]:
            parts.pop()
        return "^".join(parts)


@dataclass
class Message:
    """A message split into segments."""

    segments: list[Segment]
    delimiters: Delimiters
    _first: dict[str, Segment] | None = field(default=None, init=False, repr=False, compare=False)

    def first(self, name: str) -> Segment | None:
        """The first segment called ``name`` (an index built on the first call: the mapped
        fields of one order ask about a dozen times)."""
        index = self._first
        if index is None:
            index = {}
            for seg in self.segments:
                index.setdefault(seg.name, seg)
            self._first = index
        return index.get(name)

    @property
    def msh(self) -> Segment:
        return self.segments[0]


def normalise_segments(text: str) -> list[str]:
    """Split a message into segment lines: CR, LF and CRLF all end a segment; blank lines are
    dropped; a line that does not start with a segment id (three upper-case letters/digits
    followed by the field separator) continues the previous segment (a line break inside a
    field, as some interface engines write them)."""
    text = text.lstrip("\ufeff\x0b \t\r\n").rstrip("\x1c")
    lines = text.split("\r") if "\n" not in text else LINE_BREAKS.split(text)
    lines = [ln for ln in lines if ln and not ln.isspace()]
    if not lines:
        return []
    fs = lines[0][3] if lines[0].startswith("MSH") and len(lines[0]) > 3 else "|"
    out: list[str] = []
    ids = _SEGMENT_IDS
    for ln in lines:
        head = ln[:3]
        is_id = ids.get(head)
        if is_id is None:
            is_id = bool(_SEGMENT_ID.fullmatch(head))
            if len(ids) < 4096:
                ids[head] = is_id
        if (is_id and (len(ln) == 3 or ln[3] == fs)) or not out:
            out.append(ln)
        else:
            out[-1] += ln
    return out


_SEGMENT_IDS: dict[str, bool] = {}  # three characters -> whether they are a segment id


def split_message(raw: str, *, strict: bool = True) -> Message:
    """Split ``raw`` into segments and fields. Raises :class:`HL7ParseError` (AR) when there is
    no MSH segment first or (``strict``) its encoding characters are invalid."""
    lines = normalise_segments(raw)
    if not lines or not lines[0].startswith("MSH"):
        raise HL7ParseError("message does not start with an MSH segment", location="MSH")
    d = Delimiters.from_msh(lines[0], strict=strict)
    segments: list[Segment] = []
    for ln in lines:
        parts = ln.split(d.field)
        name = parts[0].strip()
        if name == "MSH" and not segments:
            parts = ["MSH", d.field, *parts[1:]]
        segments.append(Segment(name=name, fields=parts, delimiters=d))
    return Message(segments=segments, delimiters=d)
