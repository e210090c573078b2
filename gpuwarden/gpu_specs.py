"""Published peak figures of NVIDIA GPU models, by the name NVML reports.

Why a table: NVML reports the memory bus width and the maximum memory clock, from which
the peak memory bandwidth follows (``gpu_memory_bandwidth_peak_bytes_per_second``), but
nothing from which a tensor-core peak could be computed (the tensor throughput per SM
and clock differs by architecture and product). ``model_flops_utilization_ratio`` needs
that peak, so it comes from NVIDIA's published specifications, one entry per model, each
with the page it was read from and the figure as printed there.

The figure kept is **dense BF16 tensor-core FLOP/s**, the denominator MFU is usually
quoted against. NVIDIA's datasheets print the tensor figures *with 2:4 structured
sparsity* and mark them with an asterisk or a footnote ("with sparsity"); the dense
figure is half of it ("specifications 1/2 lower without sparsity"). Some datasheets print
both ("312 TFLOPS | 624 TFLOPS*"): the first is the dense one.

Keys are the exact product names NVML returns (``nvmlDeviceGetName``, the names of the
NVIDIA driver's list of supported GPUs): "NVIDIA H100 80GB HBM3" is the SXM5 board,
"NVIDIA H200" the SXM board. A model missing from the table has no peak
(:func:`peak_bf16_flops` returns None): MFU is then not exported rather than computed
against a guessed peak.

The simulated GPUs (``collector/sim.py``) are named after a real model with the suffix
``" (simulated)"``; that exact suffix is looked up as the model it simulates, so the demo
shows MFU. Nothing else is normalised (no case folding, no partial matches): a name that
is not exactly a key has no peak.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The suffix the simulated GPUs add to the real model they imitate (``collector/sim.py``).
SIMULATED_SUFFIX = " (simulated)"

_H100 = "https://www.nvidia.com/en-us/data-center/h100/"
_H200 = "https://www.nvidia.com/en-us/data-center/h200/"
_A100 = ("https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
         "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
_A100_PRINTED = "BFLOAT16 Tensor Core: 312 TFLOPS | 624 TFLOPS* (*with sparsity)"


@dataclass(frozen=True, slots=True)
class PeakFlops:
    """One model's peak dense BF16 tensor-core throughput and where it was read."""

    bf16_dense_flops: float  # FLOP/s, without sparsity
    source: str  # the NVIDIA page or datasheet
    printed: str  # the figure as printed there


def _peak(tflops: float, source: str, printed: str) -> PeakFlops:
    return PeakFlops(tflops * 1e12, source, printed)


BF16_PEAKS: dict[str, PeakFlops] = {
    # Hopper. The H100 datasheet of 2022 printed the PCIe board's 1,513* next to the
    # SXM's 1,979*; the product page now lists SXM and NVL.
    "NVIDIA H100 80GB HBM3": _peak(989.5, _H100, "H100 SXM BF16 Tensor Core: 1,979 teraFLOPS "
                                                 "(with sparsity)"),
    "NVIDIA H100 PCIe": _peak(756.5, "https://resources.nvidia.com/en-us-tensor-core/"
                                     "nvidia-tensor-core-gpu-datasheet",
                              "H100 PCIe BFLOAT16 Tensor Core: 1,513 teraFLOPS* (*shown with "
                              "sparsity, specifications 1/2 lower without sparsity)"),
    "NVIDIA H100 NVL": _peak(835.5, _H100, "H100 NVL BF16 Tensor Core: 1,671 teraFLOPS "
                                           "(with sparsity)"),
    "NVIDIA H200": _peak(989.5, _H200, "H200 SXM BF16 Tensor Core: 1,979 TFLOPS (with "
                                       "sparsity)"),
    "NVIDIA H200 NVL": _peak(835.5, _H200, "H200 NVL BF16 Tensor Core: 1,671 TFLOPS (with "
                                           "sparsity)"),
    # Ampere: every A100 board has the same tensor peak (the memory differs).
    "NVIDIA A100-SXM4-80GB": _peak(312.0, _A100, _A100_PRINTED),
    "NVIDIA A100-SXM4-40GB": _peak(312.0, _A100, _A100_PRINTED),
    "NVIDIA A100 80GB PCIe": _peak(312.0, _A100, _A100_PRINTED),
    "NVIDIA A100-PCIE-40GB": _peak(312.0, _A100, _A100_PRINTED),
    "NVIDIA A10": _peak(125.0, "https://www.nvidia.com/en-us/data-center/products/a10-gpu/",
                        "BFLOAT16 Tensor Core: 125 teraFLOPS | 250 teraFLOPS* (*with "
                        "sparsity)"),
    # Ada Lovelace.
    "NVIDIA L4": _peak(121.0, "https://www.nvidia.com/en-us/data-center/l4/",
                       "BF16 Tensor Core: 242 teraFLOPS* (*with sparsity)"),
    "NVIDIA L40": _peak(181.05, "https://www.nvidia.com/en-us/data-center/l40/",
                        "BFLOAT16 Tensor Core: 181.05 | 362.1* TFLOPS (*with sparsity)"),
    "NVIDIA L40S": _peak(362.05, "https://www.nvidia.com/en-us/data-center/l40s/",
                         "BF16 Tensor Core: 362.05 | 733* TFLOPS (*with sparsity)"),
    # Blackwell: the HGX page prints the 8-GPU board's figure.
    "NVIDIA B200": _peak(2250.0, "https://www.nvidia.com/en-us/data-center/hgx/",
                         "HGX B200 (8 GPUs) FP16/BF16 Tensor Core: 36 PFLOPS (with "
                         "sparsity): 4.5 PFLOPS per GPU sparse, 2.25 dense"),
}


def real_model(model: str) -> str:
    """The model a simulated GPU imitates (``"X (simulated)"`` -> ``"X"``); else itself."""
    return model.removesuffix(SIMULATED_SUFFIX)


def peak_bf16_flops(model: str) -> float | None:
    """Peak dense BF16 tensor FLOP/s of the GPU model NVML names ``model``; None when the
    table has no entry for it (never a guess)."""
    peak = BF16_PEAKS.get(real_model(model))
    return None if peak is None else peak.bf16_dense_flops
