#include "check_run.h"

#include <algorithm>

#include "harness.h"
#include "tolerances.h"

namespace rmsnorm::cli {

namespace ref = rmsnorm::reference;

HostBuffer make_buffer(DType t, std::int64_t batch, std::int64_t rows, std::int64_t cols, const Placement& p) {
  const std::int64_t rs = p.row_stride < 0 ? cols : p.row_stride;
  const std::int64_t bs = p.batch_stride < 0 ? rows * rs : p.batch_stride;
  HostBuffer b;
  b.view = TensorView::batched(nullptr, t, Device::cpu(), batch, rows, cols, bs, rs);
  const std::int64_t elements = std::max(p.buffer_elements, p.offset + ref::span_elements(b.view));
  const std::size_t es = dtype_size(t);
  b.bytes.assign(static_cast<std::size_t>(elements) * es + kGuardBytes, ref::kPoisonByte);
  b.view.data = b.bytes.data() + static_cast<std::size_t>(p.offset) * es;
  return b;
}

HostBuffer make_vector(DType t, std::int64_t n) {
  HostBuffer b;
  b.bytes.assign(static_cast<std::size_t>(n) * dtype_size(t) + kGuardBytes, ref::kPoisonByte);
  b.view = TensorView::vector(b.bytes.data(), t, Device::cpu(), n);
  return b;
}

Mirror mirror(const HostBuffer& h, const RunDevice& dev) {
  Mirror m{DeviceBuffer(dev.device, h.bytes.size()), h.view};
  m.memory.upload(h.bytes.data(), h.bytes.size());
  const std::ptrdiff_t offset = static_cast<const unsigned char*>(h.view.data) - h.bytes.data();
  m.view.data = static_cast<unsigned char*>(m.memory.data()) + offset;
  m.view.device = dev.device;
  return m;
}

void download(const Mirror& m, HostBuffer& h) { m.memory.download(h.bytes.data(), h.bytes.size()); }

void fail_with(CaseResult& r, const std::string& why) {
  if (!r.failed) r.problem = why;
  r.failed = true;
}

std::int64_t check_rstd(CaseResult& r, const HostBuffer& rstd, DType rstd_type, const std::vector<double>& want,
                        DType x, std::int64_t cols) {
  const ref::Comparison rc = ref::compare_vector(rstd.view.data, rstd_type, want, ref::rstd_tolerance(x, cols));
  if (!rc.passed()) fail_with(r, "rstd " + rc.describe());
  ref::merge(r.cmp, rc);
  return ref::count_stray_writes(rstd.bytes, rstd.view);
}

}  // namespace rmsnorm::cli
