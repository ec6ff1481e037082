// The real elementwise kernels, compiled for the host device emulation (device_emulation.h).
#include "kernels/cuda/elementwise_kernels.cu"
