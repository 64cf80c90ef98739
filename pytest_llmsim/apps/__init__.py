"""Fronts outside pytest (no pytest): the ``llmsim`` command (``cli``), the batch engine behind it
(``batch``), and the REST service (``service``)."""
