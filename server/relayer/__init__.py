"""The on-chain relayer: the core loop, answer sources, its durable store, its CLI."""
