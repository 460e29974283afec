// Forward kernels instantiated for f16 input (see forward_launch.cuh).
#include "cuda/forward_launch.cuh"

namespace rmsnorm::detail::cuda {
template void launch_forward<__half>(const ForwardProblem&, const Plan&, int, const Queue&, const GivenSums&);
}  // namespace rmsnorm::detail::cuda
