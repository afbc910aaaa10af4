"""Bridges from the store's committed events to message buses outside Jupyter (NATS JetStream).

``nats.py`` needs nats-py (the ``bus`` extra); the app imports it only when
``c.CosmicHorizons.event_bus_url`` is set, so a server without the bus starts without it.
"""
