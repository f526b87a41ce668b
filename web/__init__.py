"""The web layer: HTTP and WebSocket adapted to Redis (the app factory is ``web.app``).

Empty on purpose: gunicorn imports ``web.server`` before its gevent worker monkey-patches the
standard library, so importing this package must not import Redis, Flask or threads yet.
"""
