// A program outside the project that uses the installed package: find_package(rmsnorm),
// rmsnorm::rmsnorm, the public header alone. Run by the ctest entry package.find_package.
#include <rmsnorm/rmsnorm.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const rmsnorm::Device cpu = rmsnorm::Device::cpu();
  std::vector<float> x(8 * 64, 1.5f), y(8 * 64, 0.f), w(64, 2.0f);
  rmsnorm::forward(rmsnorm::TensorView::matrix(x.data(), rmsnorm::DType::f32, cpu, 8, 64),
                   rmsnorm::TensorView::vector(w.data(), rmsnorm::DType::f32, cpu, 64),
                   rmsnorm::TensorView::matrix(y.data(), rmsnorm::DType::f32, cpu, 8, 64));
  // A constant row normalises to 1, times the weight 2.
  for (float v : y)
    if (std::fabs(v - 2.0f) > 1e-5f) {
      std::printf("wrong value %f\n", v);
      return 1;
    }
  const rmsnorm::Status s =
      rmsnorm::forward_status(rmsnorm::TensorView::matrix(nullptr, rmsnorm::DType::f32, cpu, 8, 64), std::nullopt,
                              rmsnorm::TensorView::matrix(y.data(), rmsnorm::DType::f32, cpu, 8, 64));
  if (s.ok()) return 1;
  std::printf("rmsnorm %s from the installed package: values ok; a null x gives %s: %s\n", rmsnorm::version(),
              rmsnorm::code_name(s.code), s.message.c_str());
  return 0;
}
