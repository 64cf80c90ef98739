"""Test support shipped with pytest-llmsim: a scripted OpenAI-compatible server for deterministic tests."""
