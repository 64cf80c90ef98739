"""The pytest front, thin over the engine: the hooks (``hooks``, the entry point), the option table's
registration (``options``), collection (``items``, ``transcript_items``), the per-process session and its
run-ahead (``session``), xdist support (``xdist``), the ``llmsim`` fixture, and the plugins for reports,
recordings, the regressions gate and calibration."""
