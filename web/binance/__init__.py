"""Binance-compatible Spot REST API (``/api/v3``): a second adapter on the same journal, engine
and records as ``/api/v1``, so clients that speak Binance (ccxt, python-binance) trade unchanged.

Modules, one job each: :mod:`vault` (the server key that seals HMAC secrets), :mod:`keys`
(signed API keys in the shared key store, the CLI), :mod:`signing` (Binance's signed-request
check on the raw bytes), :mod:`errors` (``{"code", "msg"}`` with Binance's codes and texts),
:mod:`translate` (Binance parameters and objects <-> native ones), :mod:`routes` (the endpoints),
:mod:`weights` (each endpoint's request weight, for the limits of ``web.limits``),
:mod:`trading` (placing, cancelling and reading orders: the one implementation REST and the
WebSocket API share), :mod:`userdata` (user data events, the ``/ws/<listenKey>`` stream),
:mod:`wsapi` (the WebSocket API, ``/ws-api/v3``), :mod:`streams` (the market streams
``/ws/<streams>`` and ``/stream``, which hands listen keys to :mod:`userdata`).
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register ``/api/v3`` (both blueprints), its error shape, the key CLI, the market streams
    and the WebSocket API."""
    from web.binance import errors, keys, routes, streams, weights, wsapi
    from web.limits import binance_limits

    limits = binance_limits(app)
    if limits is not None:  # Binance's weight of each request (rate limits on)
        limits.weigh = weights.request_weight
    routes.init_app(app)
    errors.init_app(app)
    keys.init_app(app)
    streams.init_app(app)  # after web.ws: its handshake checks run first
    wsapi.init_app(app)  # the WebSocket API, /ws-api/v3
