"""Network architectures owned by this project (kept apart from operator glue)."""
