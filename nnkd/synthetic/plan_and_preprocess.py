"""``python -m nnkd.synthetic.plan_and_preprocess ARGS``: ``nnUNetv2_plan_and_preprocess ARGS`` for nnkd's
small synthetic datasets (demo, benchmarks, tests), with a smaller intensity sample.

nnU-Net's fingerprint draws 1e8 foreground voxels per dataset however small the dataset is (with
replacement, split over the cases) and takes percentiles of them: about 30 s per channel on 2 CPU
cores for a dataset of a few kilobytes. A 32x32 or 16x32x32 synthetic dataset has under 1e6
foreground voxels, so 1e6 draws estimate the same normalisation statistics (mean, sd, 0.5 / 99.5
percentiles) to well under 1 %. Everything else is nnU-Net's own planning and preprocessing,
unchanged. Use ``nnUNetv2_plan_and_preprocess`` for real data.
"""
import sys

INTENSITY_SAMPLE = 10 ** 6
COMMAND = [sys.executable, "-m", "nnkd.synthetic.plan_and_preprocess"]  # + nnU-Net's arguments


def main() -> None:
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry

    # the sample size reaches nnU-Net's (spawned) workers as an argument: patching this process is enough
    init = DatasetFingerprintExtractor.__init__

    def init_small_sample(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.num_foreground_voxels_for_intensitystats = INTENSITY_SAMPLE

    DatasetFingerprintExtractor.__init__ = init_small_sample
    sys.argv[0] = "nnUNetv2_plan_and_preprocess"
    plan_and_preprocess_entry()


if __name__ == "__main__":
    main()
