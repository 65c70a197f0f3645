"""Solidity sources and the Python that compiles (pinned solcjs) and deploys them."""
