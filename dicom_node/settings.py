"""Node configuration: shipped TOML defaults, a user file and environment overrides, merged and
validated once at start-up into one typed, immutable object that is passed down.

Precedence (last wins): the shipped dicom_node/shipped/config/node.toml < --config PATH <
DICOM_NODE_<SECTION>__<KEY>. An unknown section or key, or a value of the wrong type, raises
ConfigError naming it.

Paths (node.data_dir, model.findings_file, model.checkpoints) are made absolute as each layer is
read: a relative path in a file is from that file's folder (the shipped defaults' from the
installed package), one from the environment or `overrides` from the current directory; `~` is
expanded. So the same config file means the same files whatever directory a command runs in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.shipped import defaults_file, findings_file

if TYPE_CHECKING:
    from storage.db import EngineOptions

ENV_PREFIX = "DICOM_NODE_"
# Keys naming files or folders (str or list of str): anchored where their layer was written.
_PATH_KEYS = (("node", "data_dir"), ("node", "shared_dir"), ("model", "findings_file"),
              ("model", "checkpoints"), ("http", "tls_certfile"), ("http", "tls_keyfile"))
DEFAULT_DATA_DIR = "~/.local/share/dicom-node"


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "AINODE"
    host: str = "0.0.0.0"
    port: int = 11112
    data_dir: str = DEFAULT_DATA_DIR
    shared_dir: str = ""  # spool/ and outbox/; empty: data_dir (see node.toml)
    max_pdu_bytes: int = 1048576
    min_free_disk_mb: int = 1024
    allowed_calling_ae_titles: list[str] = field(default_factory=list)
    allowed_peer_hosts: list[str] = field(default_factory=list)
    network_timeout_seconds: float = 60
    other_sop_classes: str = "ignore"  # ignore | refuse: storage SOP classes other than CR/DX
    max_inflated_mb: int = 256  # a Deflated data set that inflates beyond this is refused
    heartbeat_seconds: float = 5  # a running process rewrites its heartbeat row this often


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""
    pool_size: int = 5  # PostgreSQL: connections kept per process ...
    max_overflow: int = 5  # ... and opened beyond them at peaks
    statement_timeout_seconds: float = 30  # PostgreSQL: 0 for none
    connect_timeout_seconds: float = 5


@dataclass(frozen=True)
class WorklistSettings:
    stable_seconds: float = 10
    assembly_interval_seconds: float = 1
    lease_seconds: float = 600
    max_attempts: int = 8  # attempts before FAILED (transient errors, lost leases)
    retry_delay_seconds: float = 15  # after a transient error; doubles per failed attempt
    retry_max_delay_seconds: float = 900


@dataclass(frozen=True)
class ModelSettings:
    name: str = "chexzero-demo-synthetic"
    checkpoints: list[str] = field(default_factory=list)
    clinical_use: bool = False  # false: every output carries the not-for-clinical-use statement
    findings_file: str = field(default_factory=lambda: str(findings_file()))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cpu_threads: int = 0  # 0: torch's default
    batch_size: int = 16
    dicom_conversion: str = "equalize"  # equalize (as MIMIC-CXR-JPG was made) | voi
    prepare_mode: str = "threads"  # threads | processes: where files are decoded beside the model
    prepare_workers: int = 0  # 0: half the CPU cores (2..8)
    reduced_resolution: bool = False  # JPEG 2000 / baseline JPEG decoded near the model's size
    caveat: str = "NOT FOR CLINICAL USE — demo model trained on synthetic data"
    # true: start even when a checkpoint's model card says an enabled finding was not trained
    allow_untrained_findings: bool = False


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool = True  # run the inference worker inside `dicom-node serve`
    poll_interval_seconds: float = 5  # fallback when no "study queued" event wakes it
    study_aggregation: str = "mean"  # mean | max: per-image probabilities -> study level
    report_skipped: bool = True  # a SKIPPED study gets a "not analysed: why" SR + summary image
    shutdown_grace_seconds: float = 10  # on SIGTERM, wait this long for the study in progress
    heat_maps_per_study: int = 3  # where-the-model-looked overlays, top-scoring positives; 0: none


@dataclass(frozen=True)
class OutboundSettings:
    max_attempts: int = 5  # only for failure statuses of no standard meaning; never an outage
    initial_retry_delay_seconds: float = 10  # per object, after the PACS failed that object
    max_retry_delay_seconds: float = 300
    backoff_multiplier: float = 2
    probe_initial_delay_seconds: float = 2  # per destination, C-ECHO while down or refusing
    probe_max_delay_seconds: float = 10
    poll_interval_seconds: float = 5  # also picks up `dicom-node outbound retry|resend`
    send_lease_seconds: float = 300  # a claimed delivery is retried after this if a sender died
    pending_alert_seconds: float = 900  # status --check: degraded past this oldest-PENDING age


@dataclass(frozen=True)
class DestinationSettings:
    name: str
    ae_title: str
    host: str
    port: int
    send_sr: bool = True
    send_summary: bool = True
    send_text_report: bool = True  # the text report SR (what OHIF and other viewers render)
    send_heat_maps: bool = True
    connect_timeout_seconds: float = 10
    network_timeout_seconds: float = 60
    dimse_timeout_seconds: float = 120


@dataclass(frozen=True)
class RetentionSettings:
    delivered_days: float = 7  # spool and outbox files kept this long after delivery
    worklist_days: float = 365  # work-list rows and results (no patient data) kept this long
    interval_minutes: float = 60  # the scheduled purge inside `serve`; 0: only `dicom-node purge`
    pressure_margin_mb: int = 512  # purge delivered studies when free disk < floor + this


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True)
class HttpSettings:
    enabled: bool = True  # /healthz, /readyz and /metrics inside `dicom-node serve`
    host: str = "127.0.0.1"  # loopback: expose it deliberately (reverse proxy, 0.0.0.0)
    port: int = 8080  # 0: any free port (the bound one is logged as http_listening)
    tls_certfile: str = ""  # PEM certificate (chain); with tls_keyfile: HTTPS, secure cookies
    tls_keyfile: str = ""
    console: bool = True  # the signed-in admin console (pages) beside /healthz etc.
    session_hours: float = 8  # a console sign-in lasts this long


@dataclass(frozen=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    worklist: WorklistSettings = field(default_factory=WorklistSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    destinations: list[DestinationSettings] = field(default_factory=list)
    http: HttpSettings = field(default_factory=HttpSettings)
    source_files: tuple[str, ...] = ()

    @property
    def data_path(self) -> Path:
        return Path(self.node.data_dir).expanduser().resolve()

    @property
    def engine_options(self) -> EngineOptions:
        from storage.db import EngineOptions

        d = self.database
        return EngineOptions(d.pool_size, d.max_overflow, d.statement_timeout_seconds,
                             d.connect_timeout_seconds)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_path / 'worklist.sqlite'}"

    def resolve(self, path: str) -> Path:
        """A configured path as an absolute Path. Loading made configured paths absolute
        already; a relative one (Settings built in code) is from the current directory."""
        return Path(os.path.abspath(Path(path).expanduser()))

    @property
    def shared_path(self) -> Path:
        """Where spool/ and outbox/ live: `[node] shared_dir`, or data_dir when it is empty.
        The work list keeps paths relative to spool/ and outbox/, so hosts sharing it may
        mount it at different paths."""
        if self.node.shared_dir.strip():
            return Path(self.node.shared_dir).expanduser().resolve()
        return self.data_path

    @property
    def spool_path(self) -> Path:
        return self.shared_path / "spool"

    @property
    def outbox_path(self) -> Path:
        return self.shared_path / "outbox"


_CHECKS: dict[tuple[str, str], typing.Callable[[Any], str | None]] = {
    ("node", "port"): lambda v: None if 0 <= v <= 65535 else "must be 0..65535",
    ("node", "ae_title"): lambda v: None
    if 0 < len(v) <= 16 and v.isascii() and "\\" not in v
    else "must be 1..16 ASCII characters",
    ("node", "min_free_disk_mb"): lambda v: None if v >= 0 else "must be >= 0",
    ("node", "max_pdu_bytes"): lambda v: None
    if v == 0 or 4096 <= v <= 2**32 - 1
    else "must be 0 (unlimited) or 4096..4294967295",
    ("node", "network_timeout_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("node", "other_sop_classes"): lambda v: None
    if v in ("ignore", "refuse")
    else "must be ignore or refuse",
    ("node", "max_inflated_mb"): lambda v: None if v >= 1 else "must be >= 1",
    ("node", "heartbeat_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("database", "pool_size"): lambda v: None if v >= 1 else "must be >= 1",
    ("database", "max_overflow"): lambda v: None if v >= 0 else "must be >= 0",
    ("database", "statement_timeout_seconds"): lambda v: None if v >= 0 else "must be >= 0",
    ("database", "connect_timeout_seconds"): lambda v: None if v >= 1 else "must be >= 1",
    ("node", "data_dir"): lambda v: None if v.strip() else "must not be empty",
    ("model", "findings_file"): lambda v: None if v.strip() else "must not be empty",
    ("worker", "shutdown_grace_seconds"): lambda v: None if v >= 0 else "must be >= 0",
    ("worker", "heat_maps_per_study"): lambda v: None if 0 <= v <= 20 else "must be 0..20",
    ("outbound", "pending_alert_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("worklist", "stable_seconds"): lambda v: None if v >= 0 else "must be >= 0",
    ("worklist", "assembly_interval_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("worklist", "lease_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("worklist", "max_attempts"): lambda v: None if v >= 1 else "must be >= 1",
    ("worklist", "retry_delay_seconds"): lambda v: None if v >= 0 else "must be >= 0",
    ("worklist", "retry_max_delay_seconds"): lambda v: None if v >= 0 else "must be >= 0",
    ("model", "dicom_conversion"): lambda v: None
    if v in ("equalize", "voi")
    else "must be equalize or voi",
    ("model", "batch_size"): lambda v: None if v >= 1 else "must be >= 1",
    ("model", "prepare_mode"): lambda v: None
    if v in ("threads", "processes")
    else "must be threads or processes",
    ("model", "prepare_workers"): lambda v: None if v >= 0 else "must be >= 0",
    ("worker", "study_aggregation"): lambda v: None
    if v in ("mean", "max")
    else "must be mean or max",
    ("outbound", "max_attempts"): lambda v: None if v >= 1 else "must be >= 1",
    ("outbound", "backoff_multiplier"): lambda v: None if v >= 1 else "must be >= 1",
    ("outbound", "initial_retry_delay_seconds"): lambda v: None if v >= 0 else "must be >= 0",
    ("outbound", "probe_initial_delay_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("outbound", "probe_max_delay_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("outbound", "poll_interval_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("outbound", "send_lease_seconds"): lambda v: None if v > 0 else "must be > 0",
    ("retention", "delivered_days"): lambda v: None if v >= 0 else "must be >= 0",
    ("retention", "worklist_days"): lambda v: None if v >= 0 else "must be >= 0",
    ("retention", "interval_minutes"): lambda v: None if v >= 0 else "must be >= 0",
    ("retention", "pressure_margin_mb"): lambda v: None if v >= 0 else "must be >= 0",
    ("destinations[]", "name"): lambda v: None
    if v and v.replace("-", "").replace("_", "").isalnum() and len(v) <= 64
    else "must be 1..64 letters, digits, - or _",
    ("destinations[]", "ae_title"): lambda v: None
    if 0 < len(v) <= 16 and v.isascii() and "\\" not in v
    else "must be 1..16 ASCII characters",
    ("destinations[]", "port"): lambda v: None if 0 < v <= 65535 else "must be 1..65535",
    ("http", "port"): lambda v: None if 0 <= v <= 65535 else "must be 0..65535",
    ("http", "host"): lambda v: None if v.strip() else "must not be empty",
    ("http", "session_hours"): lambda v: None if 0 < v <= 24 * 30 else "must be > 0 and <= 720",
    ("logging", "format"): lambda v: None if v in ("json", "text") else "must be json or text",
    ("logging", "level"): lambda v: None
    if v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR")
    else "must be DEBUG, INFO, WARNING or ERROR",
}


def load_settings(
    user_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Merge defaults, the user file, the environment and explicit overrides; validate."""
    environ = os.environ if environ is None else environ
    shipped = defaults_file()
    merged = _read_file(shipped)
    sources = [str(shipped)]
    if user_file is not None:
        _merge(merged, _read_file(Path(user_file)), origin=str(user_file))
        sources.append(str(user_file))
    here = Path.cwd()
    _merge(merged, _anchor_paths(_environment_overrides(environ), here), origin="environment")
    if overrides:
        extra = {k: dict(v) for k, v in overrides.items()}
        _merge(merged, _anchor_paths(extra, here), origin="overrides")
    return _build(Settings, merged, sources=tuple(sources))


def _read_file(path: Path) -> dict[str, Any]:
    """A config file's tables, its relative paths made absolute against its own folder."""
    return _anchor_paths(_read_toml(path), Path(os.path.abspath(path)).parent)


def _anchor_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """`values` with the _PATH_KEYS that are relative joined to `base` (in place; returned).
    Values of the wrong type are left for validation to name."""
    for section, key in _PATH_KEYS:
        table = values.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table[key]
        if isinstance(value, str):
            table[key] = _anchor(value, base)
        elif isinstance(value, list):
            table[key] = [_anchor(v, base) if isinstance(v, str) else v for v in value]
    return values


def _anchor(text: str, base: Path) -> str:
    if not text.strip():
        return text  # empty: refused by validation, not turned into `base` itself
    path = Path(text).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any], origin: str) -> None:
    for section, values in extra.items():
        if isinstance(values, list):  # a list of tables ([[destinations]]) replaces the default
            base[section] = list(values)
            continue
        if isinstance(base.get(section), list):
            raise ConfigError(f"{origin}: [[{section}]] is a list of tables; set it in a file")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table of keys")
        base.setdefault(section, {}).update(values)


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """DICOM_NODE_<SECTION>__<KEY> variables; any other DICOM_NODE_ name is a ConfigError (a
    single underscore would otherwise be ignored without a word)."""
    found: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if not section or not key or "__" in key:
            raise ConfigError(
                f"environment variable {name} is not DICOM_NODE_<SECTION>__<KEY> "
                "(two underscores between section and key, e.g. DICOM_NODE_NODE__PORT)"
            )
        found.setdefault(section, {})[key] = _parse_env_value(raw)
    return found


def _parse_env_value(raw: str) -> Any:
    """Environment values are TOML/JSON literals when they parse as one, else plain strings."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _build(cls: type, merged: dict[str, Any], sources: tuple[str, ...]) -> Settings:
    sections = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_files"}
    for name in merged:
        if name not in sections:
            raise ConfigError(f"unknown config section [{name}] (known: {', '.join(sections)})")
    hints = typing.get_type_hints(cls)
    built = {name: _build_field(name, hints[name], merged.get(name)) for name in sections}
    http = built.get("http")
    if http is not None and bool(http.tls_certfile) != bool(http.tls_keyfile):
        raise ConfigError("http.tls_certfile and http.tls_keyfile go together: set both or neither")
    names = [d.name for d in built.get("destinations", [])]
    if len(set(names)) != len(names):
        raise ConfigError(f"destinations: names must be unique, got {names}")
    return cls(**built, source_files=sources)


def _build_field(name: str, hint: Any, value: Any) -> Any:
    if typing.get_origin(hint) is list:  # [[name]] tables
        return _coerce(name, hint, [] if value is None else value)
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"[{name}] must be a table of keys, got {value!r}")
    return _build_section(name, hint, value or {})


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"unknown config key {section}.{key} (known in [{section}]: {', '.join(sorted(known))})"
            )
    required = [
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in required:
        if key not in values:
            raise ConfigError(f"config key {section}.{key} is required")
    checked = {key: _coerce(f"{section}.{key}", hints[key], v) for key, v in values.items()}
    for key, value in checked.items():
        check = _CHECKS.get((section, key))
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"config key {section}.{key} = {value!r}: {problem}")
    return cls(**checked)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, options[0], value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config key {name} must be a list, got {value!r}")
        return [_coerce(f"{name}[]", item, v) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name} must be a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {name} must be a table, got {value!r}")
        return _build_section(name, hint, value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {name} must be true or false, got {value!r}")
    if hint in (int, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ConfigError(f"config key {name} must be {hint.__name__}, got {value!r}")
    return value


def peer_networks(entries: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """node.allowed_peer_hosts as networks: an address, a CIDR network (192.0.2.0/24) or a host
    name resolved now (all its addresses). Raises ConfigError naming the key and the entry."""
    found: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in entries:
        text = entry.strip()
        try:
            found.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        if "/" in text:
            raise ConfigError(f"config key node.allowed_peer_hosts: {text!r} is not a network")
        try:
            infos = socket.getaddrinfo(text, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(
                f"config key node.allowed_peer_hosts: {text!r} is neither an address, a network "
                f"nor a host name that resolves ({exc})"
            ) from None
        found.extend(ipaddress.ip_network(info[4][0].split("%", 1)[0]) for info in infos)
    return tuple(dict.fromkeys(found))
