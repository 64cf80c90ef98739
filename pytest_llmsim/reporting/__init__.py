"""Reports over a run's records (no pytest; they read only ``model``): the summary and gates (``summary``), the
terminal's text (``terminal``), pytest-html fragments (``html``), the markdown summary (``markdown``), exports
(``exports``), baselines (``baseline``), the histogram (``histogram``), per-conversation chat files
(``chat_files``) and ``collector`` turning pytest's reports into records."""
