"""The operator's view of a running bridge: `bridge explain NAME` and the /status page."""
