// The real loss kernels, compiled for the host device emulation (device_emulation.h).
#include "kernels/cuda/loss_kernels.cu"
