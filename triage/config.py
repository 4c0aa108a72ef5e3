"""Engine configuration: one typed object, with visible precedence.

    embedded defaults  <  triage.toml  <  TRIAGE_* environment variables  <  command line

The file is found from ``--config`` or ``TRIAGE_CONFIG``; without either, ``./triage.toml`` is
read when present. Every setting below states its default. A bad value stops start-up with a
:class:`~triage.errors.ConfigError` naming the setting, where it came from, and what is wrong.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from triage.errors import ConfigError
from triage.peers import checked

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)
ENV_PREFIX = "TRIAGE_"


class Settings(BaseModel):
    """All engine settings. Environment variable: ``TRIAGE_`` + the upper-case field name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        Path("var"),
        description="Data directory (DICOM files, the SQLite database, endpoints.json; one "
        "engine per directory); logs go to stderr",
    )
    database_url: str = Field(
        "", description="SQLAlchemy URL; empty: sqlite:///<data_dir>/triage.db"
    )
    bind_host: str = Field("127.0.0.1", description="Address every listener binds to")
    dicom_port: int = Field(11112, ge=0, le=65535, description="DICOM Storage SCP port (0: any)")
    dicom_ae_title: str = Field("TRIAGE", description="Our AE title (1-16 chars, no backslash)")
    dicom_max_pdu: int = Field(
        1048576,
        ge=0,
        description="Maximum PDU length we announce to peers (A-ASSOCIATE); 0: unlimited; "
        "default 1048576 (1 MiB)",
    )
    dicom_max_pdu_claim: int = Field(
        16 * 1024 * 1024,
        ge=4096,
        description="A peer whose PDU header claims more bytes than this is aborted (A-ABORT) "
        "before anything is buffered; never less than dicom_max_pdu + 6; default 16777216",
    )
    dicom_max_associations: int = Field(
        10,
        ge=1,
        description="Concurrent DICOM associations; one more is rejected (A-ASSOCIATE-RJ, "
        "transient, local limit exceeded); default 10",
    )
    dicom_max_dataset_bytes: int = Field(
        4 * 1024 * 1024 * 1024,
        ge=1024,
        description="Largest data set one C-STORE may carry; a larger one is read to its end, "
        "discarded and answered 0xA700; default 4294967296 (4 GiB)",
    )
    dicom_spill_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="A data set arriving is held in memory up to this size, then in an "
        "unlinked temporary file in data_dir (memory per association stays under it); "
        "default 67108864 (64 MiB)",
    )
    dicom_acse_timeout_seconds: float = Field(
        30.0, gt=0, description="Wait for the A-ASSOCIATE-RQ after a connection; default 30"
    )
    dicom_dimse_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="A C-STORE whose data set stops arriving this long is aborted; default 30",
    )
    dicom_network_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="An association idle (or a read stalled) this long is closed; default 60",
    )
    dicom_allowed_peers: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Calling AE titles allowed, each with its source addresses or networks "
        "(CIDR, or '*' for any), e.g. {CT1 = ['10.0.0.5']}; others are rejected; "
        "default: none (any AE from anywhere, logged). Environment: JSON",
    )
    dicom_min_free_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=0,
        description="Refuse C-STORE (0xA700) while the data directory's disk has less free "
        "space than this; default 1073741824 (1 GiB)",
    )
    hl7_port: int = Field(2575, ge=0, le=65535, description="HL7 MLLP listener port (0: any)")
    hl7_max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest HL7 frame accepted"
    )
    hl7_mapping_file: str = Field(
        "",
        description="HL7 site mapping (which field holds what per sender); default '': "
        "<rules_dir>/hl7-mapping.yaml, built-in defaults when that file is absent",
    )
    hl7_allowed_peers: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) that may send HL7, e.g. ['10.0.0.7', "
        "'10.1.0.0/16']; a connection from elsewhere is closed before anything is read "
        "(logged); default: none (any address, logged at start). Environment: JSON",
    )
    hl7_idle_timeout_seconds: float = Field(
        300.0, gt=0, description="Close an HL7 connection idle this long; default 300"
    )
    hl7_max_connections: int = Field(
        256,
        ge=1,
        description="HL7 connections open at once; past it the connection idle longest (2 s "
        "or more, nothing unanswered) is closed for the new one, else the new one is closed; "
        "default 256",
    )
    hl7_commit_batch_max: int = Field(
        256,
        ge=1,
        description="Most HL7 messages stored in one database transaction (group commit); "
        "default 256",
    )
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP API port (0: any)")
    ris_host: str = Field("", description="RIS MLLP host; empty: nothing is sent (logged)")
    ris_port: int = Field(
        0, ge=0, le=65535, description="RIS MLLP port; 0 with host empty (set both or neither)"
    )
    ris_timeout_seconds: float = Field(
        10.0, gt=0, description="Connect/ACK wait for the RIS; default 10"
    )
    ris_backoff_max_seconds: float = Field(
        300.0,
        gt=0,
        description="Longest wait between two tries of a RIS send: the first wait is "
        "retry_seconds, doubled after each failure in a row, capped here (the RIS unreachable, "
        "or a message without an ACK); default 300",
    )
    ris_max_failures: int = Field(
        10,
        ge=1,
        description="A message written to the RIS this many times without an acceptable ACK "
        "(timed out, connection lost) goes to the dead letters (`triage outbox list --dead`); "
        "a RIS that refuses connections counts against no message; default 10",
    )
    sending_application: str = Field("TRIAGE", description="MSH-3 of messages we send")
    sending_facility: str = Field("TRIAGE", description="MSH-4 of messages we send")
    receiving_application: str = Field("RIS", description="MSH-5 of messages we send")
    receiving_facility: str = Field("RIS", description="MSH-6 of messages we send")
    triton_url: str = Field(
        "", description="host:port of a running Triton (gRPC); empty: start the bundled one"
    )
    triton_timeout_seconds: float = Field(30.0, gt=0, description="Per-request inference limit")
    triton_startup_seconds: float = Field(90.0, gt=0, description="Wait for local Triton ready")
    triton_protocol: Literal["grpc", "http"] = Field(
        "grpc",
        description="Protocol to Triton; default 'grpc' (triton_url is then the HTTP endpoint "
        "when 'http')",
    )
    triton_retry_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Tries per Triton request on transient errors (UNAVAILABLE, deadline "
        "exceeded, connection refused); default 3 (1: no retry)",
    )
    triton_retry_base_seconds: float = Field(
        0.2, ge=0, description="First retry wait, doubled each retry, full jitter; default 0.2"
    )
    triton_retry_max_seconds: float = Field(
        2.0, ge=0, description="Longest wait between two retries; default 2.0"
    )
    triton_breaker_failures: int = Field(
        5,
        ge=1,
        description="Consecutive transient failures that open the circuit breaker (calls "
        "then fail fast, studies wait as AI pending); default 5",
    )
    triton_breaker_reset_seconds: float = Field(
        10.0, ge=0, description="Open breaker: wait before one probe call; default 10"
    )
    triton_restart_max_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest wait between restarts of the bundled Triton when it dies "
        "(backoff from 1 s, doubling); default 60",
    )
    triton_shared_memory: bool = Field(
        True,
        description="Send each input volume to Triton through system shared memory when "
        "Triton is on this host (the bundled one, or triton_url on 127.0.0.1/localhost); "
        "over the network when the server refuses it; default true",
    )
    triton_warmup: bool = Field(
        True,
        description="One inference per routed model on a synthetic volume before /healthz "
        "says ready; default true",
    )
    key_images: bool = Field(
        True,
        description="Store a key image PNG with each AI result (<data_dir>/keyimages); "
        "default true",
    )
    models_dir: Path = Field(REPO_ROOT / "models", description="Triton model repository")
    rules_dir: Path = Field(REPO_ROOT / "rules", description="routing.yaml and urgency.yaml")
    study_stable_seconds: float = Field(
        10.0, gt=0, description="A study is complete after this long with no new instance"
    )
    stable_seconds_by_modality: dict[str, float] = Field(
        default_factory=dict,
        description="Quiet period per modality, e.g. {MR = 60}; default: none (all use "
        "study_stable_seconds). Environment: JSON",
    )
    stable_seconds_by_ae: dict[str, float] = Field(
        default_factory=dict,
        description="Quiet period per calling AE title (wins over modality); default: none. "
        "Environment: JSON",
    )
    expected_series_quiet_seconds: float = Field(
        2.0,
        gt=0,
        description="Quiet period once every series a routing rule expects is present",
    )
    order_match_window_hours: float = Field(
        24.0,
        gt=0,
        description="Link a study with no UID/accession match to the one order of the same "
        "patient and modality placed within this many hours",
    )
    completion_poll_seconds: float = Field(1.0, gt=0, description="How often completion runs")
    retry_seconds: float = Field(
        15.0,
        gt=0,
        description="Wait before retrying AI, and the first wait before retrying a RIS send "
        "(then doubled, up to ris_backoff_max_seconds); default 15",
    )
    api_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token for automation: `Authorization: Bearer <token>` is accepted "
        "with the radiologist role (read the worklist, give feedback); at least 16 characters; "
        "never printed; default '' (none; per-user tokens: `triage users token`)",
    )
    session_max_minutes: float = Field(
        480.0,
        gt=0,
        description="A browser session ends this long after its sign-in, used or not; "
        "default 480 (8 hours)",
    )
    session_idle_minutes: float = Field(
        30.0, gt=0, description="A browser session unused this long ends; default 30"
    )
    session_cookie_secure: bool = Field(
        False,
        description="Mark the session cookie Secure (sent over HTTPS only): set true when "
        "the engine is reached through a TLS proxy; default false",
    )
    login_max_failures: int = Field(
        5,
        ge=1,
        description="Failed sign-ins in a row that lock an account; default 5",
    )
    login_lockout_minutes: float = Field(
        15.0,
        gt=0,
        description="How long a locked account refuses sign-ins (counted from the last "
        "failure; `triage users passwd` unlocks it at once); default 15",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log")

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        if not 1 <= len(v.strip()) <= 16 or "\\" in v or not v.isascii():
            raise ValueError("must be 1-16 ASCII characters without a backslash")
        return v.strip()

    @field_validator("dicom_allowed_peers", mode="before")
    @classmethod
    def _allowed_peers(cls, v: object) -> object:
        if isinstance(v, str):  # from the environment or --set
            try:
                v = json.loads(v) if v.strip() else {}
            except ValueError as exc:
                raise ValueError(
                    f'expected a JSON object like {{"CT1": ["10.0.0.5"]}}: {exc}'
                ) from None
        if not isinstance(v, dict):
            return v
        peers: dict[str, list[str]] = {}
        for ae, addresses in v.items():
            title = str(ae).strip()
            if not 1 <= len(title) <= 16 or "\\" in title or not title.isascii():
                raise ValueError(f"{ae!r}: an AE title is 1-16 ASCII characters")
            if isinstance(addresses, str):
                addresses = [addresses]
            if not isinstance(addresses, list) or not addresses:
                raise ValueError(f"{title}: give a list of addresses, networks or '*'")
            try:
                peers[title] = checked(addresses, wildcard=True)
            except ValueError as exc:
                raise ValueError(f"{title}: {exc}") from None
        return peers

    @field_validator("hl7_allowed_peers", mode="before")
    @classmethod
    def _hl7_peers(cls, v: object) -> object:
        if isinstance(v, str):  # from the environment or --set
            try:
                v = json.loads(v) if v.strip() else []
            except ValueError as exc:
                raise ValueError(f'expected a JSON list like ["10.0.0.7"]: {exc}') from None
        if not isinstance(v, list):
            return v
        return checked(v)

    @field_validator("stable_seconds_by_modality", "stable_seconds_by_ae", mode="before")
    @classmethod
    def _json_mapping(cls, v: object) -> object:
        if isinstance(v, str):  # from the environment or --set
            try:
                v = json.loads(v) if v.strip() else {}
            except ValueError as exc:
                raise ValueError(f'expected a JSON object like {{"MR": 60}}: {exc}') from None
        if isinstance(v, dict):
            for key, value in v.items():
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ValueError(f"{key}: seconds must be a number > 0, not {value!r}")
            return {str(k).strip().upper(): float(x) for k, x in v.items()}
        return v

    def stable_seconds_for(self, modality: str, calling_ae: str) -> float:
        """The quiet period after which a study from ``calling_ae`` of ``modality`` is complete."""
        ae = calling_ae.strip().upper()
        if ae in self.stable_seconds_by_ae:
            return self.stable_seconds_by_ae[ae]
        return self.stable_seconds_by_modality.get(
            modality.strip().upper(), self.study_stable_seconds
        )

    @field_validator("api_token")
    @classmethod
    def _api_token(cls, v: SecretStr) -> SecretStr:
        token = v.get_secret_value().strip()
        if token and (len(token) < 16 or not token.isascii() or not token.isprintable()):
            raise ValueError("must be empty or at least 16 printable ASCII characters")
        return SecretStr(token)

    @field_validator("ris_host", "triton_url", "database_url", "bind_host")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'triage.db'}"

    @property
    def ris_configured(self) -> bool:
        return bool(self.ris_host) and self.ris_port > 0


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults < file < environment < ``overrides`` (CLI)."""
    env = os.environ if environ is None else environ
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    path = config_path or env.get("TRIAGE_CONFIG") or None
    if path is None and Path("triage.toml").is_file():
        path = "triage.toml"
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", f"file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("config", f"cannot read {p}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{p}: {exc}") from None
        section = data.get("triage", data)
        if not isinstance(section, dict):
            raise ConfigError("config", f"{p}: [triage] must be a table")
        outside = [key for key in data if key != "triage"] if "triage" in data else []
        if outside:  # a key above [triage], or another table: it would be silently unread
            what = "table" if isinstance(data[outside[0]], dict) else "setting"
            raise ConfigError(
                outside[0],
                f"{what} outside the [triage] table in {p}: with a [triage] table every "
                "setting goes under it",
            )
        for key, value in section.items():
            if key not in fields:
                raise ConfigError(key, f"unknown setting in {p}")
            values[key] = value
            sources[key] = str(p)

    for key in fields:
        env_name = ENV_PREFIX + key.upper()
        if env_name in env:
            values[key] = env[env_name]  # a string; pydantic coerces it per field type
            sources[key] = f"environment {env_name}"
    _warn_unknown_environment(env)

    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(key, "unknown setting on the command line")
        values[key] = value
        sources[key] = "command line"

    try:
        settings = Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        setting = str(err["loc"][0]) if err["loc"] else "config"
        origin = sources.get(setting, "default")
        given = values.get(setting, "<default>")
        if setting in fields and fields[setting].annotation is SecretStr:
            given = "<hidden>"  # a secret is never printed, not even a wrong one
        raise ConfigError(setting, f"{err['msg']} (got {given!r} from {origin})") from None
    if bool(settings.ris_host) != (settings.ris_port > 0):  # half a RIS address sends nothing
        given, missing = ("ris_host", "ris_port") if settings.ris_host else ("ris_port", "ris_host")
        raise ConfigError(
            missing,
            f"not set, but {given} is ({getattr(settings, given)!r} from "
            f"{sources.get(given, 'default')}): give both to send to the RIS, neither to send "
            "nothing",
        )
    return settings


# TRIAGE_* variables that are not settings but are read on purpose
OTHER_ENVIRONMENT = frozenset({"TRIAGE_CONFIG", "TRIAGE_SCREENSHOTS"})


def _warn_unknown_environment(env: Mapping[str, str]) -> None:
    """A TRIAGE_* variable that is no setting is ignored, with a warning naming the closest
    setting (a typo such as TRIAGE_DICOM_PROT would otherwise leave the default in force
    without a word)."""
    names = [ENV_PREFIX + k.upper() for k in Settings.model_fields]
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in names and name not in OTHER_ENVIRONMENT:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            log.warning("environment %s is not a setting of the engine, ignored%s", name, hint)


def describe_settings() -> list[tuple[str, str, str, str]]:
    """(name, environment variable, default, description) for every setting, for docs/CLI."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Path) and default.is_absolute():
            with contextlib.suppress(ValueError):
                default = f"<repo>/{default.relative_to(REPO_ROOT)}"
        if isinstance(default, SecretStr):
            default = default.get_secret_value()  # the default is empty; a value never shows
        shown = repr(str(default) if isinstance(default, Path) else default)
        rows.append((name, ENV_PREFIX + name.upper(), shown, field.description or ""))
    return rows


def _toml_value(value: Any) -> str:
    """``value`` (a setting's default) as a TOML literal."""
    if isinstance(value, SecretStr):
        return _toml_value(value.get_secret_value())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def example_config() -> str:
    """A ``triage.toml`` listing every setting, commented out at its default, with what it
    means and its environment variable (``triage config --example``). Defaults that depend
    on where the engine is installed (the bundled models and rules) are described, not set."""
    lines = [
        "# triage.toml: every setting of the engine, commented out at its default.",
        "# Generated by `triage config --example`. Precedence: embedded defaults < this file <",
        "# TRIAGE_* environment variables < command line. Uncomment what your site changes;",
        "# `triage config --config FILE` prints the result, and a bad value stops start-up with",
        "# one line naming the setting.",
        "",
        "[triage]",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append("")
        for text in textwrap.wrap(field.description or name, 92):
            lines.append(f"# {text}")
        lines.append(f"# environment: {ENV_PREFIX}{name.upper()}")
        if isinstance(default, Path) and default.is_relative_to(REPO_ROOT):
            where = default.relative_to(REPO_ROOT).as_posix()
            lines.append(f"# default: the {where}/ folder of the installation")
            lines.append(f'# {name} = "/opt/triage/{where}"')
        else:
            lines.append(f"# {name} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"
