"""Chest X-ray lung-opacity MONAI Deploy application (DICOM in → DICOM SEG out)."""

__version__ = "0.1.0"
APP_NAME = "cxr-lung-opacity"
