"""Operator jobs on RQ: the third process beside ``web/`` and ``worker/`` (``python -m jobs``).

Jobs are plain functions (``jobs.archive``, ``jobs.audit``, ``jobs.exports``) that talk to Redis
and the archive only, never to the matching worker's memory; ``jobs.queues`` names the queues,
enqueues with RQ's ``Retry`` and registers the schedules. The web imports ``jobs`` to enqueue.
"""
