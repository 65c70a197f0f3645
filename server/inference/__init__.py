"""Inference: the service, dynamic batching, engines, the model registry, OIP parsing."""
