"""The one exception tree: every exception class lives in triage/errors.py, its header draws
the tree as it is, and NotAssessable is a verdict on the input, not an inference failure."""

from __future__ import annotations

import ast
import inspect
import re

from support.paths import REPO_ROOT

from triage import errors
from triage.errors import InferenceError, NotAssessable, TriageError

_PACKAGE = REPO_ROOT / "triage"


def _defined_classes() -> dict[str, type[BaseException]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == errors.__name__
    }


def test_every_public_exception_class_is_defined_in_errors_py() -> None:
    known = {"Exception", "BaseException", "ValueError", "RuntimeError", "OSError"}
    known |= set(_defined_classes())
    elsewhere: list[str] = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        if path == _PACKAGE / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            if bases & known or node.name.endswith(("Error", "Exception")):
                elsewhere.append(f"{path.relative_to(REPO_ROOT)}: {node.name}")
    assert elsewhere == []


def test_the_header_draws_the_tree_as_it_is() -> None:
    """Each class is drawn under its parent (by indentation), and every class is drawn."""
    drawn: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    doc = errors.__doc__ or ""
    for line in doc.splitlines():
        m = re.match(r"^(\s*(?:[│ ]*[├└]── )?)([A-Z][A-Za-z0-9]+)(\s|$)", line)
        if m is None or not (m.group(2) == "TriageError" or "──" in line):
            continue
        depth, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[name] = stack[-1][1] if stack else ""
        stack.append((depth, name))
    classes = _defined_classes()
    assert set(drawn) == set(classes)
    for name, parent in drawn.items():
        base = classes[name].__bases__[0]
        assert base.__name__ == (parent or "Exception"), name


def test_not_assessable_is_not_an_inference_error() -> None:
    assert issubclass(NotAssessable, TriageError)
    assert not issubclass(NotAssessable, InferenceError)
    assert NotAssessable("slice thickness 5 mm").reason == "slice thickness 5 mm"


def test_old_import_paths_still_work() -> None:
    from triage.hl7.client import RISNegativeAck, RISNoAck
    from triage.hl7.mllp import MLLPError, MLLPFrameTooLarge
    from triage.inference.shm import RegisterError
    from triage.outbound.outbox import OutboxError
    from triage.training.validate import HeldOutRefused

    moved = (RISNegativeAck, RISNoAck, MLLPError, MLLPFrameTooLarge, RegisterError)
    assert all(getattr(errors, c.__name__) is c for c in (*moved, OutboxError, HeldOutRefused))


def test_a_listener_that_cannot_bind_names_the_setting_at_fault() -> None:
    """A busy port is the port's setting; an address that is not this machine's is bind_host's
    (it used to blame http_port for a wrong bind_host)."""
    import errno
    import socket

    from triage.errors import ConfigError

    busy = ConfigError.listen("hl7_port", "127.0.0.1", 2575, OSError(errno.EADDRINUSE, "x"))
    assert busy.setting == "hl7_port" and "127.0.0.1:2575" in str(busy)
    foreign = ConfigError.listen("http_port", "192.0.2.1", 0, OSError(errno.EADDRNOTAVAIL, "x"))
    assert foreign.setting == "bind_host" and "192.0.2.1" in str(foreign)
    unknown = ConfigError.listen("dicom_port", "nohost", 0, socket.gaierror(-2, "Name unknown"))
    assert unknown.setting == "bind_host" and "Name unknown" in str(unknown)
