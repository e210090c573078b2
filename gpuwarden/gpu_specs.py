"""Published peak figures of NVIDIA GPU models, by the name NVML reports."""
