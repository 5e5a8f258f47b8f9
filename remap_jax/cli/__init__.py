"""The console commands (remap-extract, remap-index, remap-eval, remap-export, remap-serve)."""
