"""ER7 codec benchmark: our splitter (triage.hl7.codec) against python-hl7 (the ``hl7`` package),
the same messages, side by side in one run.

    .venv/bin/python benchmarks/bench_hl7_codec.py              # timings, agreement, ratios
    .venv/bin/python benchmarks/bench_hl7_codec.py --rounds 9
    .venv/bin/python benchmarks/bench_hl7_codec.py --tests      # tests/hl7 with python-hl7 as codec

Also hl7apy's structured parser (the outbound check's library) on the orders, split only.

Messages: every single-message file of tests/data/hl7 and /work/shared/data/hl7 (the batch and
file envelopes, and text that is not HL7, left out), and the blocks of hapi-hl7v2/messages.txt.
Both get the same text, segments separated by CR (python-hl7 splits segments on CR only; our
codec still runs its CR/LF/CRLF normalisation, so ours pays for that here and python-hl7 does
not).

Workloads, timed round by round, the two codecs alternating:

- ``decode``: text -> every value unescaped, as nested lists (segment, field, repetition,
  component, subcomponent); ours: ``split_message`` + splits by its ``Delimiters`` +
  ``unescape``; python-hl7: ``hl7.parse`` + a walk of its containers + ``unescape``.
- ``split``: what the engine does per message before reading a handful of fields; ours:
  ``split_message``; python-hl7: ``hl7.parse`` (it builds the whole tree at once).
- ``encode``: the decoded values -> ER7 text with the message's delimiters; ours: ``escape`` +
  joins; python-hl7: its containers built through the message's factory, leaves escaped by
  its ``escape``, then ``str``.

It also reports where the two decoders disagree (value by value), and whether each encoder's
output decodes back to the same values with our decoder. ``--tests`` runs tests/hl7 with
python-hl7 standing in for our codec (``split_message``, ``Segment.get``/``components``,
``escape``, ``unescape``), to see what behaviour would change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import hl7  # noqa: E402  (python-hl7)
from hl7 import util as hl7_util  # noqa: E402

from triage.errors import HL7ParseError  # noqa: E402
from triage.hl7.codec import (  # noqa: E402
    Delimiters,
    Message,
    Segment,
    escape,
    split_message,
    unescape,
)

SHARED = REPO.parent / "shared" / "data" / "hl7"
Tree = list[list[Any]]  # segments -> fields -> repetitions -> components -> subcomponents


# -- corpus ---------------------------------------------------------------------------------------


def _blocks(text: str) -> list[str]:
    """hapi-hl7v2/messages.txt: messages between blank/comment lines, or a new MSH."""
    blocks: list[str] = []
    cur: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("//", "/*", "*")):
            if cur:
                blocks.append("\n".join(cur))
                cur = []
            continue
        if line.startswith("MSH") and cur:
            blocks.append("\n".join(cur))
            cur = []
        cur.append(line)
    if cur:
        blocks.append("\n".join(cur))
    return blocks


def corpus() -> list[tuple[str, str]]:
    """(name, text with CR segment ends) of every single message found."""
    found: list[tuple[str, str]] = []
    files = sorted((REPO / "tests" / "data" / "hl7").glob("*.hl7"))
    if SHARED.is_dir():
        files += [*sorted(SHARED.rglob("*.hl7")), SHARED / "hapi-hl7v2" / "adt_a03.txt"]
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        found.append((path.name, text))
    if (SHARED / "hapi-hl7v2" / "messages.txt").is_file():
        text = (SHARED / "hapi-hl7v2" / "messages.txt").read_text(encoding="utf-8")
        found += [(f"messages.txt#{i}", b) for i, b in enumerate(_blocks(text), 1)]
    out = []
    for name, text in found:
        cr = "\r".join(ln for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        cr = cr.strip("\ufeff\x0b\x1c\r\n ")
        if cr.startswith("MSH") and cr.count("\rMSH") == 0:
            out.append((name, cr + "\r"))
    return out


# -- ours -----------------------------------------------------------------------------------------


def ours_decode(text: str) -> Tree:
    msg = split_message(text)
    d = msg.delimiters
    rs, cs, ss = d.repetition, d.component, d.subcomponent
    tree: Tree = []
    for seg in msg.segments:
        fields: list[Any] = [seg.name]
        for n in range(1, len(seg.fields)):
            value = seg.fields[n]
            if seg.name == "MSH" and n <= 2:
                fields.append(value)
                continue
            fields.append(
                [
                    [[unescape(s, d) for s in c.split(ss)] for c in r.split(cs)]
                    for r in value.split(rs)
                ]
            )
        tree.append(fields)
    return tree


def ours_encode(tree: Tree, d: Delimiters) -> str:
    rs, cs, ss, fs = d.repetition, d.component, d.subcomponent, d.field
    lines = []
    for fields in tree:
        out = [fields[0]]
        for n, value in enumerate(fields[1:], 1):
            if fields[0] == "MSH" and n <= 2:
                out.append(value)
                continue
            out.append(rs.join(cs.join(ss.join(escape(s, d) for s in c) for c in r) for r in value))
        if fields[0] == "MSH":  # MSH-1 is the field separator itself
            out = ["MSH" + fs + out[2], *out[3:]]
        lines.append(fs.join(out))
    return "\r".join(lines) + "\r"


# -- python-hl7 -----------------------------------------------------------------------------------


def py_decode(text: str) -> Tree:
    msg = hl7.parse(text)
    tree: Tree = []

    def level(node: Any, depth: int) -> Any:
        # python-hl7 nests only where a separator occurs: pad its leaves to our levels
        # (depth 0 field -> repetitions, 1 repetition -> components, 2 component -> subs)
        if isinstance(node, str):
            value = hl7_util.unescape(msg, node)
            for _ in range(3 - depth):
                value = [value]
            return value
        return [level(child, depth + 1) for child in node]

    for seg in msg:
        name = str(seg[0])
        fields: list[Any] = [name]
        for n in range(1, len(seg)):
            if name == "MSH" and n <= 2:
                fields.append(str(seg[n]))
                continue
            fields.append(level(seg[n], 0))
        tree.append(fields)
    return tree


def py_encode(tree: Tree, d: Delimiters) -> str:
    container = _container(d)
    root = hl7.Message(esc=container.esc, separators=container.separators)

    def esc(s: str) -> str:
        return str(hl7_util.escape(container, s))

    segments = []
    for fields in tree:
        items = [root.create_field([fields[0]])]
        for n, value in enumerate(fields[1:], 1):
            if fields[0] == "MSH" and n <= 2:  # MSH-1, MSH-2 as they are
                items.append(root.create_field([value]))
                continue
            reps = [
                root.create_repetition([root.create_component([esc(s) for s in c]) for c in r])
                for r in value
            ]
            items.append(root.create_field(reps))
        segments.append(root.create_segment(items))
    return str(root.create_message(segments))


def _container(d: Delimiters) -> Any:
    """What python-hl7's escape/unescape read: ``esc`` and ``separators`` (segment, field,
    repetition, component, subcomponent)."""
    return SimpleNamespace(
        esc=d.escape or "\\",
        separators="\r" + d.field + d.repetition + d.component + d.subcomponent,
    )


# -- runs -----------------------------------------------------------------------------------------


def _time(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _flat(tree: Tree) -> dict[tuple[int, int, int, int, int], str]:
    flat: dict[tuple[int, int, int, int, int], str] = {}
    for si, fields in enumerate(tree):
        for n, value in enumerate(fields[1:], 1):
            if isinstance(value, str):
                flat[(si, n, 0, 0, 0)] = value
                continue
            for ri, r in enumerate(value):
                for ci, c in enumerate(r):
                    for xi, s in enumerate(c):
                        flat[(si, n, ri, ci, xi)] = s
    return flat


DECODE_PROBES = (
    "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f",
    "one\\.br\\two",
    "\\H\\bold\\N\\",
    "\\X4142\\",
    "\\Zsite\\x",
    "\\.sp2\\x",
    "open \\F",
)
ENCODE_PROBES = ("a|b^c&d~e\\f", "one\ntwo", "one\r\ntwo", "MÜLLER", "O\u2019NEILL", "\x0bx\x1c")


def _short(value: str | None) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:28] + "..." + text[-9:]


def agreement(messages: list[tuple[str, str]]) -> None:
    differ: dict[str, list[str]] = {}
    values = 0
    for name, text in messages:
        a, b = _flat(ours_decode(text)), _flat(py_decode(text))
        values += len(a)
        for key in sorted(set(a) | set(b)):
            if a.get(key, "") != b.get(key, ""):
                differ.setdefault(name, []).append(
                    f"segment {key[0]} field {key[1]}: ours {_short(a.get(key))}, "
                    f"python-hl7 {_short(b.get(key))}"
                )
    print(f"decoded values compared: {values}; messages where they differ: {len(differ)}")
    for name, diffs in differ.items():
        print(f"  {name}: {len(diffs)} value(s), e.g. {diffs[0]}")
    bad: dict[str, list[str]] = {"ours": [], "python-hl7": []}
    for name, text in messages:
        tree = ours_decode(text)
        d = split_message(text).delimiters
        for who, encode in (("ours", ours_encode), ("python-hl7", py_encode)):
            back = _flat(ours_decode(encode(tree, d)))
            wrong = [(k, v) for k, v in _flat(tree).items() if back.get(k) != v]
            if wrong:
                bad[who].append(
                    f"{name} ({_short(wrong[0][1])} -> {_short(back.get(wrong[0][0]))})"
                )
    print("encode, then decode (ours), gives back the values:")
    for who, names in bad.items():
        print(f"  {who}: {len(messages) - len(names)}/{len(messages)}", "; ".join(names[:4]))
    d = Delimiters()
    print("escape sequences decoded (ours | python-hl7):")
    for text in DECODE_PROBES:
        print(f"  {text!r:<24} {unescape(text, d)!r:<16} {py_unescape(text, d)!r}")
    print("values encoded (ours | python-hl7):")
    for text in ENCODE_PROBES:
        print(f"  {text!r:<24} {escape(text, d)!r:<26} {py_escape(text, d)!r}")


def bench(title: str, messages: list[tuple[str, str]], rounds: int, repeat: int) -> None:
    texts = [t for _n, t in messages] * repeat
    trees = [(ours_decode(t), split_message(t).delimiters) for t in texts]
    work: dict[str, dict[str, Callable[[], object]]] = {
        "decode": {
            "ours": lambda: [ours_decode(t) for t in texts],
            "python-hl7": lambda: [py_decode(t) for t in texts],
        },
        "split": {
            "ours": lambda: [split_message(t) for t in texts],
            "python-hl7": lambda: [hl7.parse(t) for t in texts],
        },
        "encode": {
            "ours": lambda: [ours_encode(tr, d) for tr, d in trees],
            "python-hl7": lambda: [py_encode(tr, d) for tr, d in trees],
        },
    }
    n = len(texts)
    print(f"\n{title}: {len(messages)} x {repeat} = {n} per round, {rounds} rounds, median")
    print(f"{'per message':<11} {'ours':>12} {'python-hl7':>12} {'python-hl7 / ours':>18}")
    for name, pair in work.items():
        times: dict[str, list[float]] = {"ours": [], "python-hl7": []}
        for _ in range(rounds):  # alternate, so that both see the same machine
            for who, fn in pair.items():
                times[who] += _time(fn, 1)
        med = {who: statistics.median(t) / n * 1e6 for who, t in times.items()}
        print(
            f"{name:<11} {med['ours']:>9.1f} µs {med['python-hl7']:>9.1f} µs "
            f"{med['python-hl7'] / med['ours']:>17.2f}x"
        )


def hl7apy_split(orders: list[tuple[str, str]], rounds: int) -> None:
    """hl7apy's structured parser (groups found, as the outbound check uses it) on the orders
    it accepts, against our split."""
    from hl7apy.parser import parse_message

    def structured(text: str) -> object:
        return parse_message(text, find_groups=True, validation_level=2)

    texts, refused = [], []
    for name, text in orders:
        try:
            structured(text)
            texts.append(text)
        except Exception as exc:  # hl7apy raises its own types per problem
            refused.append(f"{name} ({type(exc).__name__})")
    times: dict[str, list[float]] = {"ours": [], "hl7apy": []}
    for _ in range(rounds):
        times["ours"] += _time(lambda: [split_message(t) for t in texts], 1)
        times["hl7apy"] += _time(lambda: [structured(t) for t in texts], 1)
    med = {who: statistics.median(t) / len(texts) * 1e6 for who, t in times.items()}
    print(f"\nhl7apy: refuses {len(refused)} of {len(orders)} orders: {'; '.join(refused)}")
    print(
        f"split, the {len(texts)} others: ours {med['ours']:.1f} µs, hl7apy {med['hl7apy']:.1f} µs"
        f" per message: {med['hl7apy'] / med['ours']:.0f}x"
    )


# -- tests/hl7 with python-hl7 as the codec -------------------------------------------------


class _PySegment(Segment):
    """Our Segment's interface over a python-hl7 segment."""

    def __init__(self, seg: Any, d: Delimiters) -> None:
        super().__init__(name=str(seg[0]).strip(), fields=[str(f) for f in seg], delimiters=d)
        self.py = seg

    def get(self, n: int, component: int = 1, subcomponent: int = 1) -> str:
        try:
            return str(self.py.extract_field(1, n, 1, component, subcomponent)).strip()
        except IndexError:
            return ""

    def components(self, n: int) -> str:
        if not 0 < n < len(self.py):
            return ""
        rep = self.py(n)(1)
        parts = [rep] if isinstance(rep, str) else [str(c) for c in rep]
        values = [str(hl7_util.unescape(self.py, p)).strip() for p in parts]
        while values and not values[-1]:
            values.pop()
        return "^".join(values)


def py_split_message(raw: str, *, strict: bool = True) -> Message:
    text = raw.replace("\r\n", "\r").replace("\n", "\r")
    try:
        msg = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises ParseException, ValueError, IndexError...
        raise HL7ParseError(f"python-hl7: {exc}", location="MSH") from None
    seps = msg.separators
    d = Delimiters(
        field=seps[1], repetition=seps[2], component=seps[3], subcomponent=seps[4], escape=msg.esc
    )
    return Message(segments=[_PySegment(s, d) for s in msg], delimiters=d)


def py_unescape(value: str, d: Delimiters = Delimiters()) -> str:
    return str(hl7_util.unescape(_container(d), value))


def py_escape(value: str, d: Delimiters = Delimiters()) -> str:
    return str(hl7_util.escape(_container(d), value))


class _PythonHL7Codec:
    """pytest plugin: every triage module's split_message/escape/unescape -> python-hl7."""

    def pytest_configure(self, config: Any) -> None:
        import importlib
        import pkgutil

        import triage

        for info in pkgutil.walk_packages(triage.__path__, "triage."):
            if ".hl7" in info.name or info.name.startswith(("triage.ingest", "triage.outbound")):
                importlib.import_module(info.name)
        swaps = [(split_message, py_split_message), (escape, py_escape), (unescape, py_unescape)]
        patched = 0
        for mod in list(sys.modules.values()):
            if not getattr(mod, "__name__", "").startswith("triage"):
                continue
            for attr, value in list(vars(mod).items()):
                for ours, theirs in swaps:
                    if value is ours:
                        setattr(mod, attr, theirs)
                        patched += 1
        print(f"python-hl7 stands in for our codec ({patched} names replaced)")


def run_tests(extra: list[str]) -> int:
    import pytest

    args = ["-q", "-p", "no:cacheprovider", "-rf", str(REPO / "tests" / "hl7"), *extra]
    return int(pytest.main(args, plugins=[_PythonHL7Codec()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=20, help="corpus copies per round")
    ap.add_argument("--tests", action="store_true", help="tests/hl7 with python-hl7 as codec")
    args, rest = ap.parse_known_args()
    if args.tests:
        sys.exit(run_tests(rest))
    hl7_util.logger.disabled = True  # it logs every escape sequence it does not know
    messages = corpus()
    print(f"python-hl7 {hl7.__version__}; {len(messages)} messages")
    agreement(messages)
    bench("all messages", messages, args.rounds, args.repeat)
    orders = [(n, t) for n, t in messages if split_message(t).msh.get(9) in ("ORM", "OMI")]
    bench("orders (ORM, OMI)", orders, args.rounds, args.repeat * 4)
    hl7apy_split(orders, args.rounds)


if __name__ == "__main__":
    main()
