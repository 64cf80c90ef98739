"""Run history and honest comparisons (no pytest): the SQLite store runs are appended to, beside the service's
batches (``store``), the statistics in pure Python (``statistics``: exact tests, intervals, false discovery
control) and two runs compared scenario by scenario with them, plus noise and flakiness over the history
(``compare``)."""
