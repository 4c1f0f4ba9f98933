"""Base models: the embedded SmolLM2-135M-Instruct, local folders, and tiny test models."""
