"""The table of published GPU peaks: lookups by NVML name, sources, the simulated suffix."""

from __future__ import annotations

import pytest

from gpuwarden.collector.sim import SIM_MODEL
from gpuwarden.gpu_specs import BF16_PEAKS, SIMULATED_SUFFIX, peak_bf16_flops


def test_nvml_names_give_the_dense_bf16_peak() -> None:
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.5e12)
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert peak_bf16_flops("NVIDIA L40S") == pytest.approx(362.05e12)


def test_every_entry_is_sourced_and_half_a_printed_sparse_figure() -> None:
    for name, peak in BF16_PEAKS.items():
        assert name.startswith("NVIDIA "), name  # NVML's product names
        assert peak.source.startswith("https://www.nvidia.com/") or peak.source.startswith(
            "https://resources.nvidia.com/"), name
        assert "sparsity" in peak.printed, name  # the printed figure says which it is
        assert 50e12 < peak.bf16_dense_flops < 5e15, name


def test_unknown_models_have_no_peak() -> None:
    assert peak_bf16_flops("NVIDIA GeForce RTX 4090") is None
    assert peak_bf16_flops("Tesla T4") is None  # no BF16 tensor cores at all
    assert peak_bf16_flops("nvidia h100 80gb hbm3") is None  # exact names only
    assert peak_bf16_flops("") is None


def test_the_simulated_gpu_counts_as_the_model_it_imitates() -> None:
    assert SIM_MODEL.endswith(SIMULATED_SUFFIX)
    assert peak_bf16_flops(SIM_MODEL) == peak_bf16_flops("NVIDIA H100 80GB HBM3")
    assert peak_bf16_flops("NVIDIA Foo (simulated)") is None
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3 (simulated) (simulated)") is None
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3 (sim)") is None
