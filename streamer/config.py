"""The one settings model: defaults < TOML file (``--config``) < environment (``STREAMER_``) < CLI flags.

Nested keys use ``__`` in the environment (``STREAMER_KAFKA__BOOTSTRAP_SERVERS``). Unknown keys and invalid
values fail at start-up with a message naming the key. Secrets are ``SecretStr`` and are revealed only when
the librdkafka configuration is built, never in logs, reprs or errors.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from streamer.dedup import DEFAULT_COOLDOWN_S, DEFAULT_ESCALATION, NOVELTY_COOLDOWN_S
from streamer.errors import ConfigError
from streamer.gate import DEFAULT_GATE_Z, DEFAULT_LONG, DEFAULT_SHORT

# librdkafka keys that this module sets itself, and why `extra` may not: each would be overwritten
# (and so silently ignored) or would break a guarantee. Every other property passes through, and `extra`
# wins over the defaults set here (message.timeout.ms, linger.ms, compression.type).
_OWN_KEYS = {
    "bootstrap.servers": "use kafka.bootstrap_servers",
    "metadata.broker.list": "use kafka.bootstrap_servers",  # librdkafka's alias of the above
    "group.id": "use kafka.group_id",
    "auto.offset.reset": "use kafka.auto_offset_reset",
    "session.timeout.ms": "use kafka.session_timeout_ms",
    "enable.auto.commit": "offsets are committed only once a batch's output is acknowledged",
    "enable.auto.offset.store": "offsets are stored only once a batch's output is acknowledged",
    "partition.assignment.strategy": "the detector commits on cooperative-sticky revocations",
    "enable.idempotence": "retries must not duplicate or reorder alerts",
}


# Kafka's own rule for topic names (at most 249 of these characters; not "." or "..").
TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# librdkafka's default; a consumer that does not poll for this long leaves its group.
_MAX_POLL_INTERVAL_MS = 300_000
# The producer's message.timeout.ms unless kafka.extra sets it (librdkafka's default is 300 s).
DEFAULT_MESSAGE_TIMEOUT_MS = 120_000
# The detector waits for a batch's output at most message.timeout.ms and this much more
# (streamer.runner), without polling its consumer.
FLUSH_SLACK_MS = 10_000


def _int_or_none(value: SecretStr | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.get_secret_value().strip())
    except ValueError:
        return None


def _poll_and_flush_ms(extra: dict[str, SecretStr]) -> tuple[int, str, int | None]:
    """From ``kafka.extra``, the values in effect: max.poll.interval.ms, the name of the producer's
    delivery timeout (``delivery.timeout.ms`` where set, else its alias ``message.timeout.ms``) and its
    milliseconds (None where it is not a whole number)."""
    poll_ms = _int_or_none(extra.get("max.poll.interval.ms")) or _MAX_POLL_INTERVAL_MS
    key = "delivery.timeout.ms" if "delivery.timeout.ms" in extra else "message.timeout.ms"
    ms = _int_or_none(extra[key]) if key in extra else DEFAULT_MESSAGE_TIMEOUT_MS
    return poll_ms, key, ms


class KafkaSettings(_Section):
    """Where to read events and write alerts, and how to talk to the brokers."""

    bootstrap_servers: str = "localhost:9092"
    group_id: str = "ae-streamer"
    input_topics: list[TopicName] = Field(default_factory=lambda: ["events"], min_length=1)
    alert_topic: TopicName = "alerts"
    dead_letter_topic: TopicName = "dead-letters"
    # Optional: one small record per scored event (offset, score, threshold, alert) for audits and dashboards.
    scores_topic: TopicName | None = None
    # From Kafka's default group.min.session.timeout.ms (6 s; below it a broker refuses the group join,
    # and the consumer would wait for partitions that never come) to librdkafka's max.poll.interval.ms
    # (300 s), which the session timeout may not exceed.
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    # Processed offsets are committed (asynchronously) at most this often, and always on partition
    # revocation and shutdown; 0 commits after every batch. A crash re-reads at most this much (at least
    # once either way). Per batch, at 20,000 events/s the embedded broker spent ~5 % of a core more on
    # ~200 commits a second, and the latency soak's p99 was longer (streamer bench, README).
    commit_interval_ms: int = Field(default=200, ge=0, le=60_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # When a partition the group has read before is assigned (a restart, a rebalance), up to this many
    # records before its committed offset are read again into the detector's state only (windows,
    # novelty, threshold, rise gate, cooldown), with nothing published or committed for them: the
    # detector carries on warm instead of cold. 0 = off. See streamer.warmstart.
    warm_start_events: int = Field(default=10_000, ge=0, le=1_000_000)
    # The most the read may take per assignment (the consumer is not polled meanwhile: well under
    # librdkafka's max.poll.interval.ms, 300 s); what was read by then is kept.
    warm_start_timeout_s: float = Field(default=30.0, gt=0.0, le=120.0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    # Any other librdkafka property, e.g. {"ssl.key.password": "..."}; values are secret by default.
    extra: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _no_reserved(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        clash = sorted(_OWN_KEYS.keys() & value.keys())
        if clash:
            why = "; ".join(f"{key}: {_OWN_KEYS[key]}" for key in clash)
            raise ValueError(
                f"librdkafka keys set by ae-streamer itself cannot be given here ({why})"
            )
        # The detector waits for every record of a batch to settle before it commits, without polling
        # the consumer: librdkafka's 0 ("never give up") would stop the service at the first slow
        # flush, and a wait past max.poll.interval.ms drops the consumer from its group. Checked on
        # the values in effect, defaults included.
        poll_ms, key, ms = _poll_and_flush_ms(value)
        if ms is None or not 0 < ms < poll_ms - FLUSH_SLACK_MS:
            raise ValueError(
                f"{key} ({'set' if key in value else DEFAULT_MESSAGE_TIMEOUT_MS}) must be a whole "
                f"number of milliseconds above 0 and below max.poll.interval.ms ({poll_ms}) less "
                f"{FLUSH_SLACK_MS}: the detector waits that long and {FLUSH_SLACK_MS // 1000} s "
                "more for a batch's alerts before it commits, without polling its consumer"
            )
        return value

    @model_validator(mode="after")
    def _warm_start_within_poll(self) -> KafkaSettings:
        """The warm-start read runs inside a consumer poll, and the batch that poll returns may then
        wait up to message.timeout.ms (and FLUSH_SLACK_MS) for its alerts: together they must stay
        below max.poll.interval.ms, or the group drops the detector."""
        poll_ms, key, flush_ms = _poll_and_flush_ms(self.extra)
        if flush_ms is None:  # refused by the check of extra
            return self
        if self.warm_start_events and self.warm_start_timeout_s * 1000 + flush_ms >= (
            poll_ms - FLUSH_SLACK_MS
        ):
            raise ValueError(
                f"warm_start_timeout_s ({self.warm_start_timeout_s:g}) and {key} ({flush_ms}) "
                f"together must stay below max.poll.interval.ms ({poll_ms}) less {FLUSH_SLACK_MS}: "
                "the warm-start read and the batch after it run between two polls of the consumer"
            )
        return self

    def common_config(self) -> dict[str, Any]:
        """librdkafka properties shared by consumer, producer and admin client (secrets revealed here only)."""
        # Brokers close idle connections (connections.max.idle.ms); a reconnect is not worth a log line.
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "log.connection.close": False,
        }
        optional = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        conf.update({k: v.get_secret_value() for k, v in self.extra.items()})
        return conf

    def consumer_config(self) -> dict[str, Any]:
        """At-least-once consumer: offsets are committed explicitly after the batch's output is acknowledged."""
        return {
            **self.common_config(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.auto_offset_reset,
            "session.timeout.ms": self.session_timeout_ms,
            "partition.assignment.strategy": "cooperative-sticky",
        }

    def producer_config(self) -> dict[str, Any]:
        """Idempotent producer: retries never duplicate or reorder an alert within a partition."""
        return {
            # A record is acknowledged or failed within this (librdkafka's default is 300 s): the
            # detector waits that long for a batch's output, below the consumer's 300 s
            # max.poll.interval.ms. `extra` may override these three.
            "message.timeout.ms": DEFAULT_MESSAGE_TIMEOUT_MS,
            "linger.ms": 5,
            "compression.type": "lz4",
            **self.common_config(),
            "enable.idempotence": True,
        }


class BatchSettings(_Section):
    """A micro-batch closes at ``max_events`` events or ``max_wait_ms`` after its first event."""

    max_events: int = Field(default=5_000, ge=1, le=1_000_000)
    max_wait_ms: int = Field(default=5, ge=0, le=60_000)
    # The bytes of the events' values a batch holds: it closes once past this (by at most one fetch,
    # which librdkafka's queued.max.messages.kbytes bounds), so that large messages cannot make a batch
    # of max_events hold gigabytes (5,000 events of 1 MB).
    max_bytes: int = Field(default=64 * 1_048_576, ge=1_024, le=16 * 1_073_741_824)


_MIN_EXCEEDANCES = 10
# threshold.alert_cap's "auto". Models of single events (dense, VAE; no rise gate): 1.05, a small
# headroom that keeps the rolling estimate unbiased (streamer.threshold); 1.5 cost them SMAP, MSL and
# ASD (long labelled segments, which a bar that rises faster stops flagging point by point). Where the
# gate chooses what is published (windowed models), 1.5: the bar rises faster after an alert, so
# fewer exceedances of the same incident reach the gate: NAB 65.6 -> 67.2 (seeds 1 and 2: 65.2 ->
# 65.7, 66.2 -> 66.9), and with the gate's long span of 3,000 68.2 (README, detection quality).
DEFAULT_ALERT_CAP = 1.05
GATED_ALERT_CAP = 1.5


class ThresholdSettings(_Section):
    """The adaptive threshold: an online estimate of the q-quantile of recent scores."""

    # Chosen on the evaluation suites (README, detection quality): q = 0.99 beats both baselines on
    # SMAP and MSL (0.995 did on SMAP only). The quantile of the last 2,000 scores (river's exact
    # RollingQuantile) rather than of all history (P-square): SMAP 0.143 -> 0.197, MSL 0.172 -> 0.171,
    # and on ASD the only setting found that beats pca (0.267 against 0.245; all history 0.274 against
    # 0.280). It costs ~0.2 us per score (the in-process pipeline ~13 % slower). (Those figures were
    # measured with alerting scores clipped to the threshold, alert_cap 1.)
    q: float = Field(default=0.99, gt=0.0, lt=1.0)
    # At most a million scores: River keeps the window as one sorted array (8 bytes a score) and
    # moves part of it on every update.
    window: int | None = Field(
        default=2_000,
        ge=10,
        le=1_000_000,
        description="RollingQuantile window; 0 or none = all history (P-square)",
    )
    update_on_alert: bool = False
    # An alerting score enters the estimate as at most threshold + (alert_cap - 1) * |threshold|, and as
    # the threshold itself while exceedances run over 1.5 times their expected number, so that a burst
    # cannot push the bar up however short the window; 1 keeps the estimate from ever rising
    # (streamer.threshold). "auto" = GATED_ALERT_CAP where the rise gate is on (a windowed model), else
    # DEFAULT_ALERT_CAP.
    alert_cap: Annotated[float, Field(ge=1.0, le=1e6)] | Literal["auto"] = "auto"

    def cap(self, gated: bool) -> float:
        """The alert cap for a model, ``auto`` resolved by whether the rise gate is on for it."""
        if self.alert_cap == "auto":
            return GATED_ALERT_CAP if gated else DEFAULT_ALERT_CAP
        return self.alert_cap

    @model_validator(mode="after")
    def _enough_exceedances(self) -> ThresholdSettings:
        """A rolling q-quantile needs room for the tail it estimates: at least 10 expected
        exceedances in the window. With fewer, the estimate sits near the window's maximum and the
        alert rate is far above 1 - q (q = 0.99: 19 % with 50 scores, 7 % with 200, 1.1 % with 2,000)."""
        if self.window is not None and self.window * (1.0 - self.q) < _MIN_EXCEEDANCES - 1e-9:
            least = math.ceil(_MIN_EXCEEDANCES / (1.0 - self.q) - 1e-9)
            raise ValueError(
                f"a window of {self.window} scores holds {self.window * (1.0 - self.q):g} expected "
                f"exceedances at q = {self.q:g}; it needs at least {_MIN_EXCEEDANCES}: window >= "
                f"{least}, or 0 for all history"
            )
        return self

    @field_validator("window", mode="before")
    @classmethod
    def _all_history(cls, value: Any) -> Any:
        """0, "none" or "null" (an env var or TOML has no null) mean all history."""
        if value == 0 or (
            isinstance(value, str) and value.strip().lower() in ("0", "none", "null")
        ):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return value  # not a number: the field's own type error says so
        if not 10 <= number <= 1_000_000:  # the bounds alone would hide that 0 is allowed
            raise ValueError("must be 0 (all history) or from 10 to 1000000")
        return value


class ModelSettings(_Section):
    """Which checkpoint scores events, where it runs, and how often a new version is looked for."""

    path: Path = Path("model.safetensors")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    reload_interval_s: float = Field(default=5.0, ge=0.0, description="0 disables hot reload")
    # One intra-op thread: the loop is single-threaded Python, and a second torch thread spinning beside
    # librdkafka's threads costs more than it gives on small CPU batches. 0 = torch's default.
    torch_threads: int = Field(default=1, ge=0, le=256)
    # GPU only (ignored on a CPU): the forward pass in float16, and CUDA graphs per batch-size bucket.
    # Graphs are on: on an H100 they made Scorer.score 1.2-3.4x as fast at every batch size; fp16 gave
    # no consistent gain over graphs alone, so scores stay in float32 (streamer bench --device cuda).
    precision: Literal["fp32", "fp16"] = "fp32"
    cuda_graph: bool = True


class EventSettings(_Section):
    """How events are read: optional key and time fields, and the bounds on what is read and echoed."""

    key_field: str | None = None
    time_field: str | None = None
    max_message_bytes: int = Field(default=1_048_576, ge=64, le=64 * 1_048_576)
    # At most 128 KiB: echoed as text (JSON escapes can make a byte six) or base64, it keeps every
    # record under the producer's default message.max.bytes (1,000,000).
    max_original_bytes: int = Field(default=4_096, ge=0, le=131_072)
    top_features: int = Field(default=3, ge=1, le=64)
    # After an alert, the entity publishes no alert for this many seconds of event time (its events are
    # still scored and still enter the threshold); 0 publishes every alert; "auto" = 120 s where
    # novelty weighs the model's scores (by default a windowed model of one feature), else 300 s.
    # See streamer.dedup.
    alert_cooldown_s: Annotated[float, Field(ge=0.0, le=30 * 86_400.0)] | Literal["auto"] = "auto"
    # Within the cooldown, an alert scoring at least this many times the entity's last published alert
    # is published anyway (and restarts the cooldown); 0 = never.
    alert_escalation: float = Field(default=DEFAULT_ESCALATION, ge=0.0, le=1e6)
    # An alert is published only while the entity's recent scores (an average over about the last
    # `alert_gate_short` events) stand at least this many standard deviations above its own history
    # (about the last `alert_gate_long`); 0 = off; "auto" = DEFAULT_GATE_Z for a windowed model (conv:
    # an entity's time series, where an incident is a change that lasts) and off for a model of single
    # events (dense, vae: one event can be the whole incident). See streamer.gate.
    alert_gate_z: Annotated[float, Field(ge=0.0, le=1e3)] | Literal["auto"] = "auto"
    alert_gate_short: int = Field(default=DEFAULT_SHORT, ge=1, le=1_000_000)
    alert_gate_long: int = Field(default=DEFAULT_LONG, ge=2, le=10_000_000)
    # A windowed model (conv) keeps each entity's last W - 1 rows: up to 100,000 entities, or fewer
    # where their window data would take more than this much memory ((W - 1) x features x 4 bytes
    # each, plus ~250 bytes of bookkeeping not counted here; the least recently seen entity is
    # forgotten first, and its next window is padded again).
    window_memory_mb: int = Field(default=1_024, ge=1, le=1_048_576)
    # A windowed model's score weighed by how unlike the entity's last `novelty_history` rows its
    # window is (streamer.novelty): the score becomes sqrt(error) x novelty / the entity's typical
    # novelty. "auto" = on for a windowed model of one feature (its cost grows with window x features
    # x history per event), off otherwise; on/off force it for any windowed model. The kept rows
    # ((novelty_history + W - 1) x features x 4 bytes per entity) are capped by window_memory_mb,
    # a budget of their own beside the windows'.
    novelty: bool | Literal["auto"] = "auto"
    novelty_history: int = Field(default=2_000, ge=8, le=1_000_000)
    # Where an entity's rows repeat (a daily cycle, say), novelty compares a window only with windows
    # at the same phase of earlier cycles, so that a shape that is normal at another time of day
    # counts as new (streamer.novelty.estimate_period).
    novelty_seasonal: bool = True

    def novelty_on(self, window: int, n_features: int) -> bool:
        """Whether a model of this window and feature count weighs its scores by novelty."""
        if window <= 1:
            return False
        if self.novelty == "auto":
            return n_features == 1
        return self.novelty

    def cooldown_s(self, window: int, n_features: int) -> float:
        """The alert cooldown for a model, ``auto`` resolved by whether novelty weighs its scores
        (120 s was NAB's best with novelty; without it, 300 s)."""
        if self.alert_cooldown_s == "auto":
            return NOVELTY_COOLDOWN_S if self.novelty_on(window, n_features) else DEFAULT_COOLDOWN_S
        return self.alert_cooldown_s

    def gated(self, window: int) -> bool:
        """Whether the rise gate is on for a model of this window (what the alert cap's ``auto``
        follows)."""
        return self.gate_z(windowed=window > 1) > 0

    def gate_z(self, windowed: bool) -> float:
        """The rise gate's z for a model (0 = off), ``auto`` resolved by whether it is windowed."""
        if self.alert_gate_z == "auto":
            return DEFAULT_GATE_Z if windowed else 0.0
        return self.alert_gate_z

    @model_validator(mode="after")
    def _gate_spans_ordered(self) -> EventSettings:
        if self.alert_gate_short >= self.alert_gate_long:
            raise ValueError(
                f"alert_gate_short ({self.alert_gate_short}) must be less than alert_gate_long "
                f"({self.alert_gate_long})"
            )
        return self

    @field_validator("alert_escalation")
    @classmethod
    def _escalation_off_or_at_least_one(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("alert_escalation must be 0 (off) or at least 1")
        return value


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsSettings(_Section):
    """Prometheus metrics over HTTP (``streamer.monitoring``): off unless a port is given; on the
    loopback interface unless told otherwise (``host = "0.0.0.0"`` in a container)."""

    port: int | None = Field(default=None, ge=0, le=65_535)
    host: str = "127.0.0.1"
    # TLS (PEM files): the page is served over https with this certificate chain and its key,
    # which must not be encrypted (a service cannot answer a password prompt); both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # With a CA as well, only clients that present a certificate it signed may read the page.
    tls_client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _tls_complete(self) -> MetricsSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "tls_client_ca_file checks the clients of an https page: it needs tls_cert_file "
                "and tls_key_file"
            )
        return self

    @property
    def scheme(self) -> str:
        return "http" if self.tls_cert_file is None else "https"


class Settings(BaseSettings):
    """Every setting of ``streamer run``; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    threshold: ThresholdSettings = Field(default_factory=ThresholdSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)


class _GivenOnly(Settings):
    """Settings from the values given and the defaults, never the environment."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_without_environment(data: dict[str, Any]) -> Settings:
    """The settings ``data`` gives over the defaults, whatever ``STREAMER_*`` variables are set (the
    demo runs what it says, wherever it is started)."""
    return _GivenOnly(**data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


# The branch that pydantic appends to the location of an error inside a union ("constrained-float",
# "literal['auto']", "bool", ...): not a key of the settings.
_UNION_BRANCH = re.compile(r"constrained-\w+|literal\[.*\]|float|int|bool|str")
_NOT_AUTO = "Input should be 'auto'"


def setting_errors(exc: ValidationError) -> list[tuple[tuple[str | int, ...], str]]:
    """Each error as (location, message), without input values (they may be secrets).

    A setting that takes ``auto`` or a value fails in both branches of its union; the two errors
    are folded into one, "Input should be greater than or equal to 1 (or 'auto')", where pydantic
    reports one per branch, each under a location that names the branch.
    """
    errors = [
        (tuple(err["loc"]), err["msg"])
        for err in exc.errors(include_input=False, include_url=False)
    ]

    def branch(loc: tuple[str | int, ...]) -> bool:
        return len(loc) > 1 and isinstance(loc[-1], str) and bool(_UNION_BRANCH.fullmatch(loc[-1]))

    # A union's errors come together, one per branch, one of them a literal ("auto"); a mapping's
    # key that happens to read "float" (kafka.extra) is no branch.
    unions = {loc[:-1] for loc, _ in errors if branch(loc) and str(loc[-1]).startswith("literal[")}
    merged: dict[tuple[str | int, ...], list[str]] = {}
    for loc, message in errors:
        key = loc[:-1] if branch(loc) and loc[:-1] in unions else loc
        merged.setdefault(key, []).append(message)
    out: list[tuple[tuple[str | int, ...], str]] = []
    for loc, messages in merged.items():
        unique = list(dict.fromkeys(messages))
        if _NOT_AUTO in unique and len(unique) > 1:
            unique = [f"{m} (or 'auto')" for m in unique if m != _NOT_AUTO]
        out.extend((loc, m) for m in unique)
    return out


def describe(exc: ValidationError) -> str:
    """One line per error naming the dotted key; input values are left out so secrets never leak."""
    lines = []
    for loc, message in setting_errors(exc):
        key = ".".join(str(p) for p in loc) or "(root)"
        lines.append(f"  {key}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build the settings: defaults < TOML file < ``STREAMER_*`` environment < ``overrides`` (CLI flags).

    The three are merged key by key first and validated once, so an error names the key wherever it came
    from.
    """
    file_data = _read_toml(config_file) if config_file else {}
    cli = overrides or {}
    # pydantic-settings ignores unknown top-level variables; a typo must not pass silently.
    prefix = Settings.model_config["env_prefix"]
    unknown = sorted(
        name
        for name in os.environ
        if name.upper().startswith(prefix)
        and name[len(prefix) :].split("__")[0].lower() not in Settings.model_fields
    )
    if unknown:
        raise ConfigError(
            f"invalid configuration:\n  unknown environment variable(s): {', '.join(unknown)}"
        )
    try:
        env_data = EnvSettingsSource(Settings)()  # the environment alone, parsed but not validated
        # model_validate checks the merged data without reading the environment a second time.
        return Settings.model_validate(_deep_merge(_deep_merge(file_data, env_data), cli))
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
    except SettingsError:  # a variable of a list or mapping setting that is not JSON
        raise ConfigError(_describe_env(prefix)) from None


def _describe_env(prefix: str) -> str:
    """Name the environment variables of list or mapping settings whose values are not JSON (the
    values themselves are left out: they may be secrets)."""
    bad = []
    for name, value in os.environ.items():
        if not name.upper().startswith(prefix):
            continue
        model: Any = Settings
        annotation: Any = None
        for part in name[len(prefix) :].lower().split("__"):
            field = getattr(model, "model_fields", {}).get(part)
            if field is None:
                annotation = None
                break
            model = annotation = field.annotation
        if _is_container(annotation):
            try:
                json.loads(value)
            except ValueError:
                bad.append(name)
    what = ", ".join(sorted(bad)) or "a STREAMER_ variable"
    return (
        f"invalid configuration:\n  {what}: not valid JSON; a list or mapping setting is given in the"
        " environment as JSON, e.g. STREAMER_KAFKA__INPUT_TOPICS='[\"events\"]'"
    )


def _is_container(annotation: Any) -> bool:
    """Whether a setting of this type is read from the environment as JSON (a list or mapping, or a
    section given whole)."""
    if annotation is None:
        return False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return typing.get_origin(annotation) in (list, dict) or any(
        _is_container(arg) for arg in typing.get_args(annotation) if arg is not type(None)
    )
