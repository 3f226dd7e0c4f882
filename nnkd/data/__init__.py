"""Data streams beyond nnU-Net's loader: the unpaired, class-matched teacher batches."""
