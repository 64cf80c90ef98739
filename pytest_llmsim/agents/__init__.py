"""The agent under test when it is code: a Python callable, an HTTP service or an OpenAI-compatible endpoint
(no pytest). ``runtime`` parses a scenario's ``agent:`` spec and drives each kind."""
