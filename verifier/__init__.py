"""verinfer's trust root: formats, digests and fail-closed checks.

Light on purpose: no torch, no fastapi. An auditor installs ``verinfer`` (base
install) and can check receipts and proofs offline.
"""
