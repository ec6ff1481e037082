// The real distribution_focal kernels, compiled for the host device emulation (device_emulation.h).
#include "kernels/cuda/distribution_kernels.cu"
