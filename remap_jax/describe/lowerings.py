"""Which platform-specific lowerings and ops an exported StableHLO module holds.

Depthwise convolutions and the ROI cell pass are chosen per lowering platform (`lax.platform_dependent`):
a program exported for CPU holds the CPU functions (CPU_LOWERINGS), one for CUDA or TPU the accelerator
ones (ACCELERATOR_LOWERINGS). These read a module's text (`jax.export.Exported.mlir_module()`, with its
locations) to check that nothing of one platform leaks into the other's program.
"""

from __future__ import annotations

import re

__all__ = ["ACCELERATOR_LOWERINGS", "CPU_LOWERINGS", "lowerings_in", "op_inventory"]

# Functions of the platform-specific lowerings, found by name in a module's locations (stack frames).
CPU_LOWERINGS = ("_depthwise_by_shifts", "_pool_on_cpu", "_cpu_forward", "_pool_on_cpu_bwd",
                 "_cells_by_slices", "_cells_by_rows_then_columns", "_order_key")
ACCELERATOR_LOWERINGS = ("_pool_by_gather", "_cells_by_gather")


def lowerings_in(mlir_text: str) -> set[str]:
    """Which of CPU_LOWERINGS and ACCELERATOR_LOWERINGS a StableHLO module (with its locations, the
    default of `Exported.mlir_module()`) was built from."""
    names = set(re.findall(r'loc\("([^"/()]+)"', mlir_text))
    return names & set(CPU_LOWERINGS + ACCELERATOR_LOWERINGS)


def op_inventory(mlir_text: str) -> dict[str, int]:
    """Counts in a StableHLO module's text: `conv` convolutions, `grouped_conv` those with
    feature_group_count > 1, `slice`, `gather` and `case` ops, and `cpu_depthwise` functions (the CPU
    lowering of depthwise convolutions, `_depthwise_by_shifts`). Ops of a function called several times
    count once (the text's count)."""
    groups = [int(g) for g in re.findall(r"feature_group_count = (\d+)", mlir_text)]
    return {
        "conv": len(groups),
        "grouped_conv": sum(g > 1 for g in groups),
        "slice": len(re.findall(r"stablehlo\.slice\b", mlir_text)),
        "gather": len(re.findall(r"stablehlo\.(?:dynamic_)?gather\b", mlir_text)),
        "case": len(re.findall(r"stablehlo\.case\b", mlir_text)),
        "cpu_depthwise": len(re.findall(r"func\.func private @_depthwise_by_shifts", mlir_text)),
    }
