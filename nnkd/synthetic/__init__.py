"""Small nnU-Net raw datasets with known ground truth, for the demo, tests and benchmarks.

Each kind module offers ``make_case`` (one case in memory) and ``generate`` (write the dataset(s)
into $nnUNet_raw with case labels and ``synth_truth.json``):

- ``paired3d``: PET/CT-like liver tumours graded G1-G3 from a latent severity (one dataset; REACT-KD),
- ``unpaired2d``: white-light / narrow-band-like polyp images in 3 classes (two datasets; PaGKD),
- ``lesion2d``: low / high contrast lesion detection images (two datasets; CoMoTo).

All three follow learning with privileged information (Vapnik's LUPI; Lopez-Paz et al. 2016): the
teacher's modality shows the same cause as the student's, clearly, the student's shows it faintly but
learnably, and each module's docstring gives the measured teacher / student signal (tests/test_synth.py).
"""
KINDS = ("paired3d", "unpaired2d", "lesion2d")
