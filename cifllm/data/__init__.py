"""Data preparation: readers, dataset registry, filters, deduplication and the corpus format."""
