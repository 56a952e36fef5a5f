"""One typed settings object, layered: defaults < YAML file < THEMIS_* environment < CLI flags.

Every layer is validated against schemas/config.schema.json so a typo in any of them stops
start-up with one line that names the key, instead of being silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from .validation import load_schema, validation_errors

# Presets registered by a stock Themis 1.4.0 install (storage spec §9.6).
THEMIS_BENCHMARKS = [
    "aime24", "aime25", "amc23", "beyondaime", "commonsense_qa", "coqa", "demo", "gpqa",
    "gsm-symbolic", "gsm8k", "math500", "med_qa", "medmcqa", "mmlu-pro", "olympiadbench",
    "piqa", "sciq", "social_i_qa", "supergpqa",
]


class ConfigError(Exception):
    """A configuration problem, phrased as the one line printed before exiting with status 2."""


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_size: int = 1_048_576
    idle_connection_timeout: float = 75.0
    drain_timeout: float = 10.0
    xheaders: bool = False


DEFAULT_STORAGE = ".cache/experiments"


@dataclass
class StorageSettings:
    path: Optional[str] = None
    url: Optional[str] = None
    password_file: Optional[str] = None
    sources: List[Any] = field(default_factory=list)
    cache_dir: Optional[str] = None
    max_line_bytes: int = 64 * 1024 * 1024
    extra_roots: List[str] = field(default_factory=list)

    def resolved_cache_dir(self) -> Optional[str]:
        """The persistent cache directory in use, or None when the cache is off ("")."""
        if self.cache_dir == "":
            return None
        if self.cache_dir:
            return os.path.abspath(os.path.expanduser(self.cache_dir))
        from .storage.themis1.cache import default_cache_dir

        return default_cache_dir()

    def specs(self) -> List[Any]:
        """The configured stores: `sources` if given, else `path` and/or `url`, else the default."""
        if self.sources:
            return list(self.sources)
        found = [s for s in (self.path, self.url) if s]
        return found or [DEFAULT_STORAGE]


@dataclass
class MonitorSettings:
    poll_interval: float = 1.0
    stalled_after: Optional[float] = 300.0
    stuck_after_polls: int = 30


@dataclass
class WebSocketSettings:
    ping_interval: float = 30.0
    ping_timeout: float = 20.0
    max_message_size: int = 65_536
    max_subscriptions: int = 256
    max_connections: int = 10_000
    queue_size: int = 256
    replay_buffer: int = 1_000


@dataclass
class AuthSettings:
    api_keys: List[str] = field(default_factory=list)
    api_key_files: List[str] = field(default_factory=list)
    public_metrics: bool = False


@dataclass
class CorsSettings:
    allow_origins: List[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    allow_methods: List[str] = field(default_factory=lambda: ["GET", "POST", "DELETE", "OPTIONS"])
    allow_headers: List[str] = field(default_factory=lambda: ["Content-Type", "Authorization", "X-API-Key", "If-None-Match"])
    max_age: int = 600


@dataclass
class LoggingSettings:
    level: str = "info"
    json: bool = False
    access_log: Any = True  # True, False or "all"


@dataclass
class CompareSettings:
    default_test: str = "bootstrap"
    correction: str = "holm"
    seed: int = 20240101
    n_resamples: int = 10_000
    max_work: int = 2_000_000_000
    max_runs: int = 20
    lower_is_better: List[str] = field(default_factory=lambda: ["ResponseLength"])


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    benchmarks: List[str] = field(default_factory=lambda: list(THEMIS_BENCHMARKS))
    compare: CompareSettings = field(default_factory=CompareSettings)
    config_file: Optional[str] = None  # where the file layer came from, for SIGHUP reloads

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("config_file", None)
        return d

    def api_keys(self) -> List[str]:
        """Configured keys plus those read from key files and systemd credentials."""
        keys = list(self.auth.api_keys)
        files = list(self.auth.api_key_files)
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and os.path.isfile(os.path.join(cred_dir, "api_keys")):
            files.append(os.path.join(cred_dir, "api_keys"))
        for path in files:
            try:
                with open(path, encoding="utf-8") as fh:
                    lines = list(fh)
            except OSError as exc:
                raise ConfigError(f"auth.api_key_files: cannot read {path}: {exc.strerror or exc}") from None
            for number, line in enumerate(lines, 1):
                key = line.strip()
                if not key or key.startswith("#"):
                    continue
                if len(key) < MIN_API_KEY_LENGTH:  # as for keys in the config (the schema's minLength)
                    raise ConfigError(f"{path} line {number}: an API key needs at least {MIN_API_KEY_LENGTH} "
                                      f"characters (this one has {len(key)})")
                keys.append(key)
        return keys


def _path_of(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return ".".join(parts + extra[:1]) or "<root>"
    return ".".join(parts) or "<root>"


MIN_API_KEY_LENGTH = 8
# Settings whose values are secrets, shown masked by `check-config`.
MASKED_SETTINGS = {("auth", "api_keys")}
# Settings whose values are secrets (or may carry one, as a URL's password): an error about
# them names the rule the value breaks, never the value.
SECRET_KEYS = ("auth.api_keys", "storage.path", "storage.url", "storage.sources")


def is_secret(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in SECRET_KEYS) or "password" in key.lower()


def _check(doc: Mapping[str, Any], source: str) -> None:
    errors = validation_errors("config", doc)
    if errors:
        err = errors[0]
        key = _path_of(err)
        if err.validator == "additionalProperties":
            raise ConfigError(f"{source}: unknown key '{key}'")
        if is_secret(key):
            # Never echo a secret, not even a rejected one: error lines end up in logs.
            if err.validator == "minLength" and key.startswith("auth.api_keys"):
                raise ConfigError(f"{source}: invalid value for '{key}' (not shown): an API key needs at least "
                                  f"{err.validator_value} characters (this one has {len(err.instance)})")
            shown = repr(err.instance)
            message = (err.message.replace(shown, "the value") if shown in err.message
                       else f"breaks the rule '{err.validator}'")
            raise ConfigError(f"{source}: invalid value for '{key}' (not shown): {message}")
        raise ConfigError(f"{source}: invalid value for '{key}': {err.message}")


def _merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_file(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if doc is None:
        # An empty file is a mistake more often than a wish for the defaults (a truncated
        # deployment, a reload that would silently drop every API key).
        raise ConfigError(f"{path}: the configuration file is empty; give at least one setting "
                          "or leave --config/THEMIS_CONFIG out to use the defaults")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    _check(doc, path)
    return doc


def _coerce(raw: str, schema: Mapping[str, Any], name: str) -> Any:
    if is_secret(name.lower().replace("themis_", "", 1).replace("_", ".", 1)):
        raw_shown = "(not shown)"
    else:
        raw_shown = repr(raw)
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if "null" in types and raw.strip().lower() in ("", "null", "none"):
        return None
    if "array" in types:
        return [p.strip() for p in raw.split(",") if p.strip()]
    if "boolean" in types:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        if "string" in types:
            return raw
        raise ConfigError(f"{name}: invalid value {raw_shown}: expected true or false")
    if "integer" in types:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}: invalid value {raw_shown}: expected an integer") from None
    if "number" in types:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}: invalid value {raw_shown}: expected a number") from None
    return raw


def environment_names() -> Dict[str, Tuple[str, ...]]:
    """Every THEMIS_* variable that sets something, mapped to its (section, key) path."""
    schema = load_schema("config")
    names: Dict[str, tuple] = {}
    for section, sec_schema in schema["properties"].items():
        if sec_schema.get("type") == "object":
            for key in sec_schema["properties"]:
                names[f"THEMIS_{section}_{key}".upper()] = (section, key)
        else:
            names[f"THEMIS_{section}".upper()] = (section,)
    return names


# THEMIS_* variables that are no setting but are read elsewhere: the config file's location and
# the `status` client's key and URL.
OTHER_VARIABLES = ("THEMIS_CONFIG", "THEMIS_API_KEY", "THEMIS_URL")


def unknown_environment(environ: Mapping[str, str]) -> List[str]:
    """One warning per THEMIS_* variable that sets nothing, naming the nearest real one.

    A misspelt variable is otherwise silently ignored; it is only a warning because other tools
    may own THEMIS_* names too."""
    known = list(environment_names()) + list(OTHER_VARIABLES)
    out = []
    for name in sorted(environ):
        if not name.startswith("THEMIS_") or name in known:
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = f"; did you mean {near[0]}?" if near else ""
        out.append(f"environment variable {name} is not a themis-daemon setting and is ignored{hint}")
    return out


def from_environ(environ: Mapping[str, str]) -> Dict[str, Any]:
    """THEMIS_<SECTION>_<KEY> variables, typed after the config schema; errors name the variable."""
    schema = load_schema("config")
    out: Dict[str, Any] = {}
    for name, path in environment_names().items():
        if name not in environ:
            continue
        if len(path) == 2:
            value = _coerce(environ[name], schema["properties"][path[0]]["properties"][path[1]], name)
            _check({path[0]: {path[1]: value}}, name)
            out.setdefault(path[0], {})[path[1]] = value
        else:
            value = _coerce(environ[name], schema["properties"][path[0]], name)
            _check({path[0]: value}, name)
            out[path[0]] = value
    return out


def _leaves(doc: Mapping[str, Any]) -> List[Tuple[str, ...]]:
    """The (section, key) or (section,) paths a layer sets."""
    out = []
    for section, value in doc.items():
        if isinstance(value, Mapping) and dataclasses.is_dataclass(getattr(Settings(), section, None)):
            out.extend((section, key) for key in value)
        else:
            out.append((section,))
    return out


def load_settings(config_file: Optional[str] = None, *, environ: Optional[Mapping[str, str]] = None,
                  overrides: Optional[Mapping[str, Any]] = None) -> Settings:
    """Build Settings from the layers; raises ConfigError with a one-line message."""
    return load_settings_with_origins(config_file, environ=environ, overrides=overrides)[0]


def load_settings_with_origins(config_file: Optional[str] = None, *, environ: Optional[Mapping[str, str]] = None,
                               overrides: Optional[Mapping[str, Any]] = None) -> Tuple[Settings, Dict[str, str]]:
    """Settings, and where each setting came from: `{"server.port": "env THEMIS_SERVER_PORT"}`;
    settings no layer set are "default". Origins are `default`, `file PATH`, `env NAME`, `flag`."""
    environ = os.environ if environ is None else environ
    merged = Settings().as_dict()
    origins: Dict[str, str] = {".".join(p): "default" for p in _leaves(merged)}
    if config_file is None and environ.get("THEMIS_CONFIG"):
        config_file = environ["THEMIS_CONFIG"]
    if config_file:
        layer = read_file(config_file)
        merged = _merge(merged, layer)
        origins.update({".".join(p): f"file {config_file}" for p in _leaves(layer)})
    layer = from_environ(environ)
    merged = _merge(merged, layer)
    names = {path: name for name, path in environment_names().items()}
    origins.update({".".join(p): f"env {names[p]}" for p in _leaves(layer)})
    if overrides:
        _check(overrides, "command line")
        merged = _merge(merged, overrides)
        origins.update({".".join(p): "flag" for p in _leaves(overrides)})
    _check(merged, "configuration")
    return build(merged, config_file), origins


def build(doc: Mapping[str, Any], config_file: Optional[str] = None) -> Settings:
    kwargs: Dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "config_file":
            continue
        value = doc.get(f.name)
        default = getattr(Settings(), f.name)
        if dataclasses.is_dataclass(default):
            value = type(default)(**(value or {}))
        kwargs[f.name] = value if value is not None else default
    settings = Settings(config_file=config_file, **kwargs)
    check_consistency(settings)
    return settings


def check_consistency(settings: Settings) -> None:
    """Rules across keys that the schema cannot express; ConfigError names the keys."""
    cors = settings.cors
    if cors.allow_credentials and "*" in cors.allow_origins:
        raise ConfigError("cors.allow_credentials: true needs explicit cors.allow_origins; with '*' every "
                          "web site could read answers with a user's credentials (browsers refuse it too)")


def settings_from_kwargs(storage_path: Optional[str] = None, **kwargs: Any) -> Settings:
    """Settings for programmatic `create_app(storage_path, **settings)`.

    Accepts either a `settings=Settings(...)` object or dotted-free section overrides such as
    `poll_interval=0.1` / `monitor={"poll_interval": 0.1}`; unknown names raise ConfigError.
    """
    base: Settings = kwargs.pop("settings", None) or Settings()
    doc = base.as_dict()
    flat_index = {key: section for section, value in doc.items() if isinstance(value, dict) for key in value}
    over: Dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in doc:
            over[name] = value
        elif name in flat_index:
            over.setdefault(flat_index[name], {})[name] = value
        else:
            raise ConfigError(f"unknown setting '{name}'")
    if storage_path is not None:
        over.setdefault("storage", {}).update(path=storage_path, sources=[])
    merged = _merge(doc, over)
    _check(merged, "settings")
    return build(merged, base.config_file)
