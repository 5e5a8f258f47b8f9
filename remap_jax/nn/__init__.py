"""Network pieces: backbones and their taps, R-MAC regions, the ROI max-pool op, the REMAP heads."""
