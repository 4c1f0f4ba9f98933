"""Blind pairwise review of two arms' answers: the registry store, the statistics, the web app and the CLI."""
