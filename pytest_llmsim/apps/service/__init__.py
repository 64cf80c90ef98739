"""The simulation service: a REST API (``app.py``, FastAPI served by uvicorn) over the batch engine (``batch.py``),
batches kept in SQLite (``store.py``), a webhook (``webhook.py``) and structured logs (``logs.py``).

Install it with the ``service`` extra; ``llmsim serve`` starts it. Only ``logs`` is imported without the extra.
"""
