"""The history: versions of the payload, immutable, named in ingestion order."""
