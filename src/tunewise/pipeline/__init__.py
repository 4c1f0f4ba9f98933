"""The whole loop in one command: data check -> split -> prompted baselines -> training -> evaluation ->
economics -> verdict -> report, each stage skipped when its inputs are unchanged."""
