"""Pure functions behind the operators: DICOM input, preprocessing, blending, SEG output."""
