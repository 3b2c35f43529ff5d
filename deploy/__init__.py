"""Deployment: the MAP build context (build_context), its entry point (map_main) and the DICOM listener (listener)."""
