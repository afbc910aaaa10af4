"""The settings of what watches the jobs from outside: traces, the event bus, usage analytics, alerts.

A mixin of :class:`~cosmic_horizons_lab.server.app.CosmicHorizons`, so each is still configured as
``c.CosmicHorizons.<name>``; kept here so the app module stays the wiring.
"""

from __future__ import annotations

from traitlets import Bool, Dict, Float, HasTraits, Int, List, Unicode


class ObservabilitySettings(HasTraits):
    """Traces (``server/tracing.py``), the event bus (``server/bridge/``), usage analytics
    (``server/analytics/``) and alerts (``server/alerts.py``)."""

    # -- traces (server/tracing.py; docs/tracing.md) ----------------------------------------------
    otlp_endpoint = Unicode(
        "", help="OTLP/HTTP collector to export traces to, e.g. 'http://localhost:4318' (/v1/traces is "
        "added when no path is given). Empty (the default): no span leaves the server. Needs the 'otlp' "
        "extra (opentelemetry-exporter-otlp-proto-http).",
    ).tag(config=True)

    otlp_headers = Dict(
        {}, help="HTTP headers sent with each OTLP export, e.g. {'Authorization': 'Bearer …'} for a hosted collector.",
    ).tag(config=True)

    trace_sampling_ratio = Float(
        1.0, help="Fraction of new traces recorded (0..1; parent-based: a request whose traceparent says "
        "sampled, or not, is followed, and a job's spans follow its submission's decision).",
    ).tag(config=True)

    # -- the event bus (server/bridge/; docs/event-bus.md) --------------------------------------
    event_bus_url = Unicode(
        "", help="NATS server(s) to publish every committed event to, through JetStream, e.g. "
        "'nats://127.0.0.1:4222' (comma-separated for a cluster; credentials in the URL). Empty (the "
        "default): no bus. Needs nats-py (the 'bus' extra).",
    ).tag(config=True)
    event_bus_stream = Unicode(
        "COSMIC_EVENTS", help="The JetStream stream the bridge publishes to; created at start when missing "
        "(subjects cosmic.events.> and cosmic.deadletter.>), else the subjects are added to it.",
    ).tag(config=True)
    event_bus_batch_size = Int(
        500, help="Events read from the store and published per pass (pipelined, one per job at a time).",
    ).tag(config=True)
    event_bus_retry_max_seconds = Float(
        2.0, help="Longest back-off between attempts after a failed publish (it starts at 0.1 s and "
        "doubles). A reconnection to NATS cuts it short.",
    ).tag(config=True)
    event_bus_poll_interval = Float(
        5.0, help="Seconds between looks at the store for events another server committed (this "
        "server's own commits wake the bridge at once).",
    ).tag(config=True)
    event_bus_duplicate_window = Float(
        600.0, help="Seconds the stream remembers message ids to drop duplicates (set when the bridge "
        "creates the stream). Events published again after a crash or an outage are dropped within it.",
    ).tag(config=True)
    event_bus_msg_id_prefix = Unicode(
        "", help="Put before each event id in Nats-Msg-Id. Leave empty on one store (a shared database); "
        "servers with stores of their own that share one stream need distinct prefixes, as their ids overlap.",
    ).tag(config=True)

    # -- usage analytics (server/analytics/) and alerts (alerts.py) --------------------------------
    analytics_dir = Unicode(
        "", help="Folder of the usage analytics' Parquet parts (jobs, runs, job samples; exported "
        "incrementally). Default: <Jupyter data dir>/cosmic_horizons/analytics/<a hash of the store's URL>.",
    ).tag(config=True)
    analytics_freshness = Float(
        30.0, help="Seconds a usage answer may lag the store: a usage request exports first when the last "
        "export is older than this (0: export on every request).",
    ).tag(config=True)
    operators = List(
        Unicode(), [], help="Users (as the identity provider names them) who see every account's usage, "
        "everyone's agent figures and the leaderboard. Others see only their own.",
    ).tag(config=True)
    operators_by_authorizer = Bool(
        False, help="Also count as an operator whoever jupyter-server's authorizer allows action 'admin' on "
        "resource 'cosmic-horizons-usage' (for a custom Authorizer; the default one allows everyone).",
    ).tag(config=True)
    leaderboard_public = Bool(
        False, help="Let every user read GET usage/leaderboard (by default only operators).",
    ).tag(config=True)
    alert_rules = Dict(
        {}, help="Alert rules, each merged over its default: {'failure_rate': {'window_minutes': 60, "
        "'threshold': 0.5, 'min_jobs': 5}, 'queue_wait': {'minutes': 30}, 'budget': {'levels': [80, 100]}, "
        "'gpu_idle': {'minutes': 15, 'utilization': 5.0}}; a rule set to None is off. See server/alerts.py.",
    ).tag(config=True)
    alert_interval = Float(
        60.0, help="Seconds between alert evaluations (job transitions also trigger one, a second later); "
        "0 turns the alerts off.",
    ).tag(config=True)
    alert_webhook_url = Unicode(
        "", help="URL that each alert, when it fires, is POSTed to (signed like job webhooks, with the "
        "secret of the user it concerns). Empty: alerts are events only.",
    ).tag(config=True)
