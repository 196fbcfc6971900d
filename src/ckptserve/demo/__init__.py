"""The demo: a pairs-trading environment, a compact SAC trainer that publishes checkpoints as it
learns, and `run_demo`, which serves them while it trains (`ckptserve demo`, `make demo`)."""
