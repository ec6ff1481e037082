// The real cosine kernels, compiled for the host device emulation (device_emulation.h).
#include "kernels/cuda/cosine_kernels.cu"
