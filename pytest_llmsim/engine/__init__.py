"""The engine: scenarios run to their verdicts, many in flight on one asyncio loop (no pytest).

``runner`` (scenarios in flight, one verdict each), ``conversation`` (the agent/customer loop), ``judge`` (the
evaluator's verdict), ``transcripts`` (recorded real conversations scored like simulated ones),
``calibration`` (the judge scored against labelled conversations) and ``cutpoints`` (the ``logprobs`` judge's
cut-points fitted on a calibration run).
"""
