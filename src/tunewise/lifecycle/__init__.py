"""The model after launch: captured traffic (`capture`, `redact`), its export for labelling and import as a
dataset version (`traffic`), drift against the training data (`drift`), gated retraining (`retrain`, `gate`)
and the lineage from datasets to promotions (`lineage`)."""
