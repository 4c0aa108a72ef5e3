"""What people see: server-rendered pages served by the engine's HTTP server.

- ``/``: the worklist, most urgent first, live (server-sent events, :mod:`triage.web.feed`);
- ``/studies/{study_uid}``: why a study is where it is, its key images, the order, the HL7
  messages sent for it, its priority changes and the feedback on its AI result;
- :mod:`triage.web.terminal`: the same worklist in a terminal (``triage worklist``) and the
  engine's health (``triage status``).

:mod:`triage.web.layout` is the shared layout (templates, navigation, CSS) new pages build on.
"""

from triage.web.routes import install as install_pages

__all__ = ["install_pages"]
