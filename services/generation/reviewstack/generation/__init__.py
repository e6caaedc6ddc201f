"""The embedded generation engine: a TGI-protocol server on transformers (see `main` for the run book)."""
