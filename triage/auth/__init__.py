"""Access control: local accounts with roles, argon2 passwords, server-side sessions, CSRF,
lock-out, bearer tokens, and the append-only audit log (docs/security.md).

- :mod:`triage.auth.users`: roles, accounts, passwords, lock-out, personal API tokens;
- :mod:`triage.auth.sessions`: browser sessions (server-side, with expiry);
- :mod:`triage.auth.deps`: ``require(*roles)``, the FastAPI dependency;
- :mod:`triage.auth.routes`: ``install_auth(app, db, settings)``: /login, /logout, CSRF;
- :mod:`triage.auth.audit`: ``audit(db, user, action, obj, address, detail)`` and the export;
- :mod:`triage.auth.commands`: ``triage users ...`` and ``triage audit export``.
"""
