"""Data-set preparation helpers shared by ``datasets/`` and the training loader.

- ``prep``: atomic outputs, the streaming npz writer and image helpers of the data-set scripts.
- ``resize``: the centre-crop and resize rule (PIL + NumPy, no torch).
"""
