"""Talking to models (no pytest): the OpenAI-compatible client with bounded retries (``client``), pacing at a
provider's limits (``rate_limits``), prices (``pricing``), secrets kept out of everything written
(``scrubbing``), and the bundled local model behind llama.cpp's server (``local_model``, ``local_server``).
"""
