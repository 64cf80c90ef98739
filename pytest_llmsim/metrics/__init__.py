"""Metrics: what is evaluated about a conversation (no pytest).

``api`` is the public Metric API, the registry and how a metric runs (deadline, errors); ``rules`` holds the
built-in deterministic metrics (``rules``, ``rouge``).
"""
