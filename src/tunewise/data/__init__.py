"""The data stage: load -> normalize -> validate -> stats -> dedup/leakage -> split -> dataset version."""
