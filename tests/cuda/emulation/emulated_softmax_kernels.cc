// The real softmax kernels, compiled for the host device emulation (device_emulation.h).
#include "kernels/cuda/softmax_kernels.cu"
