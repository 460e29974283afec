// Backward kernels instantiated for f32 input (see backward_launch.cuh).
#include "cuda/backward_launch.cuh"

namespace rmsnorm::detail::cuda {
template void launch_backward<float>(const BackwardProblem&, const Plan&, int, const Queue&, const GivenSums&);
}  // namespace rmsnorm::detail::cuda
