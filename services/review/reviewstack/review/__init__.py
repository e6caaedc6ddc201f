"""The Review service: builds the training prompt for a paper, has a TGI-protocol backend write the
review, and returns it structured by aspect with its lineage (see `main` for the run book)."""
