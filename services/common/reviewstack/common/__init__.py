"""review-stack's common library: the one place services share code.

Only small, explicit pieces live here — the artifact store, settings, logging, the gRPC server bootstrap,
the review format and the prompt — so that no service imports another service's internals.
"""
