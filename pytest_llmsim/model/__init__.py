"""What a scenario and its run are (no pytest): the scenario model and its files (``scenario``,
``scenario_paths``), the resolved run settings (``settings``), prompt templates (``prompts``), results
(``results``) and trial statistics (``trials``). Everything else builds on these; they import nothing of the
package but ``errors``."""
