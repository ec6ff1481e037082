#include <cuda_runtime.h>

#include "focal/math.h"
#include "focal/math_ops.h"
#include "tests/cuda/device_math.h"

namespace focal::cuda {
namespace {

__global__ void EvaluateMathKernel(const float* x, const float* t, int n, float gamma, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const ScalarOps<float> o;
  const math::Gamma<float> g = math::MakeGamma(o, gamma);
  const float sign = t[i] >= 0.5f ? 1.0f : -1.0f;
  const math::LossGrad<float> hard = math::SigmoidFocalHard(o, x[i], sign, 1.0f, g);
  const math::LossGrad<float> soft = math::SigmoidFocalSoft(o, x[i], t[i], 0.25f, 0.75f, g);
  const math::FocalTerm<float> term = math::SoftmaxFocalTerm(o, -fabsf(x[i]), g);
  const float results[6] = {hard.loss, hard.grad, soft.loss, soft.grad, term.f, term.g};
  for (int k = 0; k < 6; ++k) out[k * n + i] = results[k];
}

bool Check(cudaError_t status, const char* what, std::string* error) {
  if (status == cudaSuccess) return true;
  *error = std::string(what) + ": " + cudaGetErrorName(status) + ": " + cudaGetErrorString(status);
  return false;
}

}  // namespace

bool EvaluateMathOnDevice(const std::vector<float>& x, const std::vector<float>& t, float gamma,
                          DeviceMathResults* out, std::string* error) {
  const int n = static_cast<int>(x.size());
  if (t.size() != x.size()) {
    *error = "x and t differ in length";
    return false;
  }
  float *d_x = nullptr, *d_t = nullptr, *d_out = nullptr;
  const size_t bytes = sizeof(float) * static_cast<size_t>(n);
  bool ok = Check(cudaMalloc(&d_x, bytes), "cudaMalloc", error) && Check(cudaMalloc(&d_t, bytes), "cudaMalloc", error) &&
            Check(cudaMalloc(&d_out, 6 * bytes), "cudaMalloc", error) &&
            Check(cudaMemcpy(d_x, x.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy", error) &&
            Check(cudaMemcpy(d_t, t.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy", error);
  std::vector<float> all(6 * static_cast<size_t>(n));
  if (ok && n > 0) {
    EvaluateMathKernel<<<(n + 255) / 256, 256>>>(d_x, d_t, n, gamma, d_out);
    ok = Check(cudaGetLastError(), "kernel launch", error) &&
         Check(cudaMemcpy(all.data(), d_out, 6 * bytes, cudaMemcpyDeviceToHost), "cudaMemcpy", error);
  }
  cudaFree(d_x);
  cudaFree(d_t);
  cudaFree(d_out);
  if (!ok) return false;
  auto slice = [&](int k) { return std::vector<float>(all.begin() + k * n, all.begin() + (k + 1) * n); };
  out->hard_loss = slice(0);
  out->hard_grad = slice(1);
  out->soft_loss = slice(2);
  out->soft_grad = slice(3);
  out->term_f = slice(4);
  out->term_g = slice(5);
  return true;
}

}  // namespace focal::cuda
