"""Small nnU-Net raw datasets with known ground truth, for the demo, tests and benchmarks.

Each kind module offers ``make_case`` (one case in memory) and ``generate`` (write the dataset(s)
into $nnUNet_raw with case labels and ``synth_truth.json``):

- ``paired3d``: PET/CT-like liver tumours graded G1-G3 (one dataset; REACT-KD),
- ``unpaired2d``: white-light / narrow-band-like polyp images in 3 classes (two datasets; PaGKD),
- ``lesion2d``: low / high contrast lesion detection images (two datasets; CoMoTo).
"""
KINDS = ("paired3d", "unpaired2d", "lesion2d")
