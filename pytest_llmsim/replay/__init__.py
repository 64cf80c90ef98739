"""Record and replay (no pytest): the readable per-scenario recordings (``recordings``), replayed first, and
the machine-local disk cache (``cache``) behind them. What each record mode allows is written once, on
``config.settings.RecordMode``."""
