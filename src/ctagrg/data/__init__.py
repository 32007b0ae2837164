"""Data: reading CT (ctio, dicom), SLP preprocessing, the volume cache, the CT-RATE layout and the torch Dataset.

See docs/preprocessing.md. Heavy libraries (torch, nibabel, pydicom, SimpleITK) are imported inside functions.
"""
