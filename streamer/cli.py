"""``streamer``: the command line. Each subcommand parses its flags and calls one function elsewhere."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from streamer.args import (
    ALERT_CAP_HELP,
    alert_cap_arg,
    non_negative_float,
    positive_float,
    positive_int,
    seed,
)
from streamer.errors import ConfigError, StreamerError

if TYPE_CHECKING:
    from models import Scorer
    from models.pair import PairScorer


def _csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    if value is None:
        return
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


# CLI flag -> settings key; flags override the environment and the TOML file.
_RUN_FLAGS = {
    "bootstrap": "kafka.bootstrap_servers",
    "group": "kafka.group_id",
    "input_topic": "kafka.input_topics",
    "alert_topic": "kafka.alert_topic",
    "dead_letter_topic": "kafka.dead_letter_topic",
    "scores_topic": "kafka.scores_topic",
    "model": "model.path",
    "device": "model.device",
    "reload_interval": "model.reload_interval_s",
    "key_field": "events.key_field",
    "time_field": "events.time_field",
    "q": "threshold.q",
    "window": "threshold.window",
    "update_on_alert": "threshold.update_on_alert",
    "alert_cap": "threshold.alert_cap",
    "batch_size": "batch.max_events",
    "max_wait_ms": "batch.max_wait_ms",
    "warm_start": "kafka.warm_start_events",
    "log_level": "log.level",
    "log_format": "log.format",
    "metrics_port": "metrics.port",
}


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file (see README)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT]")
    p.add_argument("--group", help="consumer group id")
    p.add_argument("--input-topic", action="append", help="input topic (repeatable)")
    p.add_argument("--alert-topic")
    p.add_argument("--dead-letter-topic")
    p.add_argument("--scores-topic", help="also publish every event's score here (audit)")
    p.add_argument("--model", type=Path, help="checkpoint path (watched for new versions)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--reload-interval", type=float, help="seconds between checkpoint checks; 0 = off"
    )
    p.add_argument("--key-field", help="event field holding the entity key (alert key)")
    p.add_argument("--time-field", help="event field holding the event time")
    p.add_argument("--q", type=float, help="threshold quantile, default 0.99")
    p.add_argument(
        "--window",
        type=int,
        help="rolling window of the quantile estimate in scores (default 2000; 0 = all history)",
    )
    p.add_argument(
        "--update-on-alert",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let alerting scores update the threshold estimate",
    )
    p.add_argument("--alert-cap", type=alert_cap_arg, help=ALERT_CAP_HELP)
    p.add_argument("--batch-size", type=int, help="max events per micro-batch")
    p.add_argument("--max-wait-ms", type=int, help="max wait after a batch's first event")
    p.add_argument(
        "--warm-start",
        type=int,
        metavar="N",
        help="on assignment, read up to N records before each partition's committed offset again "
        "into the detector's state only (default 10000; 0 = start cold)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["auto", "json", "console"])
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port (/metrics; metrics.host, default 127.0.0.1)",
    )


def _settings_from(args: argparse.Namespace) -> Any:
    from streamer.config import load_settings

    overrides: dict[str, Any] = {}
    for flag, key in _RUN_FLAGS.items():
        _set(overrides, key, getattr(args, flag, None))
    return load_settings(getattr(args, "config", None), overrides)


def set_torch_threads(n: int) -> None:
    """Process-wide torch threading, set once at an entry point (0 keeps torch's default)."""
    if n > 0:
        import torch

        torch.set_num_threads(n)


def cmd_run(args: argparse.Namespace) -> int:
    from models.checkpoint import load_detector
    from streamer.broker import create_topics
    from streamer.logs import configure_logging
    from streamer.runner import Detector, stop_on_signals

    settings = _settings_from(args)
    configure_logging(settings.log.level, settings.log.format)
    _RunStart.starting()
    set_torch_threads(settings.model.torch_threads)
    m = settings.model

    def load(path: Path) -> Scorer | PairScorer:
        return load_detector(path, device=m.device, precision=m.precision, cuda_graph=m.cuda_graph)

    scorer = load(m.path)
    if args.create_topics:
        kafka = settings.kafka
        outputs = [
            kafka.alert_topic,
            kafka.dead_letter_topic,
            *([kafka.scores_topic] if kafka.scores_topic else []),
        ]
        create_topics(kafka.common_config(), [*kafka.input_topics, *outputs])
    detector = Detector(settings, scorer, load_scorer=load)
    with stop_on_signals(detector):
        _RunStart.running()  # the detector's handlers have the signals from here
        detector.run(max_events=args.max_events, idle_exit_s=args.idle_exit)
    return 0


def _add_run_only_flags(p: argparse.ArgumentParser, note: str = "") -> None:
    """The flags of ``run`` that are not settings."""
    p.add_argument(
        "--max-events",
        type=positive_int,
        help="stop after N events are processed and committed" + note,
    )
    p.add_argument(
        "--idle-exit", type=non_negative_float, help="stop after S seconds without input" + note
    )
    p.add_argument(
        "--create-topics", action="store_true", help="create missing topics at start" + note
    )


def cmd_config(args: argparse.Namespace) -> int:
    """The effective settings, as ``run`` resolves them; SecretStr values print as asterisks."""
    settings = _settings_from(args)
    print(orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from streamer.training import train_command

    return train_command(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from streamer.simulate import SimConfig, generate, produce

    config = SimConfig(
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        malformed_rate=args.malformed_rate,
        entities=args.entities,
    )
    report = produce(
        args.bootstrap,
        args.topic,
        generate(args.events, config),
        rate=args.rate,
        labels_out=args.labels_out,
    )
    wanted = args.anomaly_rate * report.count
    if wanted >= 1 and report.labelled < wanted / 2:
        # An anomaly is a span of 1 to 30 events of one entity, placed with gaps: a short stream
        # or many entities leave no room for most of them.
        import structlog

        structlog.get_logger("streamer.simulate").warning(
            "fewer_anomalies_than_asked",
            labelled=report.labelled,
            asked=round(wanted),
            hint="a longer stream or fewer --entities leaves room for them",
        )
    print(
        orjson.dumps(
            {
                "events": report.count,
                "labelled": report.labelled,
                "end_offsets": report.end_offsets,
                "elapsed_s": round(report.elapsed_s, 3),
            },
            option=orjson.OPT_NON_STR_KEYS,
        ).decode()
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamer.demo import DemoConfig, print_summary, run_demo

    summary = run_demo(DemoConfig(events=args.events, seed=args.seed, progress=not args.json))
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        print_summary(summary)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    """The embedded broker in the foreground, for the host commands of the README on a machine
    without Kafka or Docker; Ctrl-C or SIGTERM stops it (its topics are in memory: gone with it)."""
    from streamer.broker import EmbeddedBroker

    with EmbeddedBroker(port=args.port) as broker:
        if args.topics:
            broker.create_topics(args.topics, partitions=args.partitions)
        print(
            orjson.dumps(
                {"bootstrap": broker.bootstrap, "topics": args.topics or [], "stop": "Ctrl-C"}
            ).decode(),
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except (KeyboardInterrupt, SystemExit):  # SIGTERM is a SystemExit inside the block
            pass
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from streamer.monitoring import TLSFileError, client_context, health

    if (args.cert_file is None) != (args.key_file is None):
        raise ConfigError("--cert-file and --key-file go together: give both or neither")
    context = None
    if args.ca_file is not None or args.cert_file is not None:
        try:
            context = client_context(args.ca_file, args.cert_file, args.key_file)
        except (TLSFileError, OSError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"health: cannot use the TLS files: {exc}") from None
    ok, why = health(args.url, args.max_age_s, context)
    print(why)
    return 0 if ok else 1


def cmd_schema(args: argparse.Namespace) -> int:
    from streamer.alerts import json_schema, json_schemas

    document = json_schemas() if args.record is None else json_schema(args.record)
    print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer", description="Streaming anomaly detection with autoencoders"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="consume events, score them, publish alerts")
    _add_run_flags(p)
    _add_run_only_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "config",
        help="print the settings `run` would use with these flags (TOML, STREAMER_* variables, "
        "defaults), secrets masked, as JSON",
    )
    _add_run_flags(p)
    _add_run_only_flags(p, " (taken, so that a run command line can be pasted; not a setting)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("train", help="train an autoencoder on normal data")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="CSV, JSONL or .npz (array 'train') of normal data")
    src.add_argument("--from-topic", help="read training events from this Kafka topic")
    p.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers (with --from-topic; default: kafka.bootstrap_servers)",
    )
    p.add_argument(
        "--config", type=Path, help="TOML settings file: the Kafka connection for --from-topic"
    )
    p.add_argument(
        "--max-events",
        type=positive_int,
        default=100_000,
        help="events to read with --from-topic",
    )
    p.add_argument(
        "--features", type=_csv_list, help="feature names (default: all numeric columns)"
    )
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (.safetensors)")
    p.add_argument(
        "--model",
        choices=["dense", "conv", "vae", "conv+hst"],
        default="dense",
        help="conv+hst: conv with Half-Space Trees and the training range beside it, in one "
        "checkpoint (one series; the default for univariate data in evaluate)",
    )
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--window", type=int, default=16, help="conv window length")
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--entity-column", help="column/field holding the entity key (conv windows)")
    p.add_argument("--name", help="model name carried in alerts")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("simulate", help="produce a labelled multi-sensor stream")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--anomaly-rate", type=float, default=0.01)
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--entities", type=int, default=8)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument(
        "--labels-out", type=Path, help="JSONL of topic/partition/offset/label per event"
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="the whole product end to end on an embedded broker")
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "broker", help="an embedded Kafka-protocol broker (Tansu, in memory) until Ctrl-C"
    )
    p.add_argument("--port", type=positive_int, default=9092, help="loopback port (default 9092)")
    p.add_argument("--topics", type=_csv_list, help="topics to create, comma-separated")
    p.add_argument("--partitions", type=positive_int, default=3, help="partitions of each topic")
    p.set_defaults(func=cmd_broker)

    _add_health(sub)

    from streamer import bench, evaluate, latent

    latent.register(sub)
    evaluate.register(sub)
    bench.register(sub)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of the records the detector writes (alerts, dead letters, scores)",
    )
    p.add_argument(
        "record",
        nargs="?",
        choices=["alert", "dead_letter", "score"],
        help="one record kind's schema alone (default: one document holding all three)",
    )
    p.set_defaults(func=cmd_schema)
    return parser


def _add_health(sub: Any) -> None:
    p = sub.add_parser(
        "health", help="exit 0 if a running detector's loop went round lately (its metrics page)"
    )
    p.add_argument(
        "--url",
        default="http://127.0.0.1:9464/metrics",
        help="the detector's metrics page (run with --metrics-port; default %(default)s)",
    )
    p.add_argument(
        "--max-age-s",
        type=positive_float,
        default=90.0,
        help="the longest since the loop's last turn that is still healthy (default %(default)s)",
    )
    p.add_argument(
        "--ca-file",
        type=Path,
        help="an https page's CA (PEM), where its certificate is not one the system trusts",
    )
    p.add_argument(
        "--cert-file",
        type=Path,
        help="the client certificate (PEM) to show a page that asks for one (metrics.tls_client_ca_file)",
    )
    p.add_argument("--key-file", type=Path, help="the unencrypted key of --cert-file (PEM)")
    p.set_defaults(func=cmd_health)


def _health_parser() -> argparse.ArgumentParser:
    """The parser of ``health`` alone: a check run every few seconds must not import torch (the full
    parser does, through the commands that register themselves: 3 s and 300 MB a check)."""
    parser = argparse.ArgumentParser(prog="streamer")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_health(sub)
    return parser


def _expected_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports in one line (OSError: a path, a folder); ModelError only where
    ``models`` was imported (importing it imports torch, which ``health`` must not)."""
    errors = sys.modules.get("models.errors")
    model_error: tuple[type[Exception], ...] = (errors.ModelError,) if errors else ()
    return (StreamerError, ValueError, OSError, *model_error)


class StopBeforeStart(BaseException):
    """A stop signal that came while ``run`` was starting (loading the model, creating topics, making
    its clients): nothing was consumed yet, so nothing is owed and it ends at once.
    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way holds it."""


class _RunStart:
    """Where ``run`` is on its way to the detector's loop, for the stop signals that come first.

    - ``parsing``: the command line and settings (parsing imports torch: seconds). A signal is kept
      and acted on once logging is set up, so that its line has the run's format and goes to stderr;
    - ``starting``: the model's load, ``--create-topics``, the clients. A signal ends the run at once;
    - ``running``: the detector's own handlers have the signals (runner.stop_on_signals); after its
      loop they are this one's again, and a signal then is ignored: the run is ending already, and
      its exit status (2 after an aborted flush, say) must stand.
    """

    phase = "parsing"
    pending: str | None = None

    @classmethod
    def handle(cls, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if cls.phase == "parsing":
            cls.pending = cls.pending or name
        elif cls.phase == "starting":
            raise StopBeforeStart(name)

    @classmethod
    def starting(cls) -> None:
        """Logging is set up: a signal kept while parsing ends the run now, later ones at once."""
        cls.phase = "starting"
        if cls.pending is not None:
            raise StopBeforeStart(cls.pending)

    @classmethod
    def running(cls) -> None:
        cls.phase = "running"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    previous: dict[signal.Signals, Any] = {}
    if argv and argv[0] == "run" and _on_main_thread():
        # From the first line: with the default action a SIGTERM while run started (parsing imports
        # torch; the model's load takes seconds more on a GPU) killed it without a word.
        _RunStart.phase, _RunStart.pending = "parsing", None
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _RunStart.handle)
    try:
        return _main(argv)
    except StopBeforeStart as stop:
        import structlog

        structlog.get_logger("streamer.cli").info("stopped", before_start=True, signal=str(stop))
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # an in-process caller's later signals are not run's
        _RunStart.phase, _RunStart.pending = "running", None


def _main(argv: list[str]) -> int:
    light = bool(argv) and argv[0] == "health"
    args = (_health_parser() if light else build_parser()).parse_args(argv)
    from streamer.logs import configure_logging

    # Log lines go to stderr, never into a command's output on stdout (`train ... | jq`); `run`, `bench`,
    # `demo` and `evaluate` set their own level.
    configure_logging("INFO")
    try:
        return int(args.func(args))
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise
        from streamer.logs import json_lines

        if args.command == "run" and json_lines():  # the service's log is read by machines
            import structlog

            structlog.get_logger("streamer.cli").error("run_failed", error=str(exc), exit_code=2)
        else:
            print(f"streamer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _on_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
