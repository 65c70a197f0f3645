"""Receipts: the signer, the receipt worker process, the receipt store, the keys."""
