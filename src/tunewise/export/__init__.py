"""Deployment: exports of a trained run (PEFT adapter, merged weights, GGUF, Ollama) checked to behave as
trained (export/run.py), and the CLI of promotion and rollback (registry/aliases.py)."""
