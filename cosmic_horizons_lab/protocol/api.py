"""The REST and WebSocket API's URL prefix, relative to the Jupyter server's base URL."""

API_PREFIX = "cosmic-horizons/api/"
