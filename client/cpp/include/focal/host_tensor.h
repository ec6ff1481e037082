// Tensors as a client holds them: focal::HostTensor, the core's owned tensor (focal/tensor.h):
// a dtype, a shape and the raw little-endian, C-contiguous bytes that travel on the wire
// (focal.v1.Tensor), with the helpers that build and read them (Float32, FromFloats,
// ToDoubles, View, ...). One type for the backends' results, the client's tensors and the
// tests'; this header stays so that client code includes what it always did.
#pragma once

#include "focal/dtype.h"
#include "focal/tensor.h"
