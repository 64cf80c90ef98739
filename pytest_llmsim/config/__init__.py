"""The option table (no pytest): every flag, ini key and environment variable, declared once and resolved once
into the engine's settings (``model.settings``), by the pytest front (``plugin.options``), the ``llmsim`` command
and the service alike."""
