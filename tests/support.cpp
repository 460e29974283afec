#include "support.h"

#include <algorithm>
#include <cctype>

namespace rmsnorm::testing {

HostTensor make_tensor(DType dtype, std::int64_t batch, std::int64_t rows, std::int64_t cols, std::int64_t batch_stride,
                       std::int64_t row_stride, std::int64_t lead, std::int64_t trail) {
  HostTensor t = reference::make_host(dtype, batch, rows, cols, batch_stride, row_stride);
  const std::size_t es = dtype_size(dtype);
  t.bytes.insert(t.bytes.begin(), static_cast<std::size_t>(lead) * es, reference::kPoisonByte);
  t.bytes.insert(t.bytes.end(), static_cast<std::size_t>(trail) * es, reference::kPoisonByte);
  t.view.data = t.bytes.data() + static_cast<std::size_t>(lead) * es;
  return t;
}

HostTensor make_vector(DType dtype, std::int64_t n, std::int64_t lead, std::int64_t trail) {
  HostTensor t = reference::make_host_vector(dtype, n);
  const std::size_t es = dtype_size(dtype);
  t.bytes.insert(t.bytes.begin(), static_cast<std::size_t>(lead) * es, reference::kPoisonByte);
  t.bytes.insert(t.bytes.end(), static_cast<std::size_t>(trail) * es, reference::kPoisonByte);
  t.view.data = t.bytes.data() + static_cast<std::size_t>(lead) * es;
  return t;
}

bool all_poisoned(const std::vector<unsigned char>& bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](unsigned char b) { return b == reference::kPoisonByte; });
}

std::uint64_t seed_of(std::initializer_list<std::int64_t> parts) {
  // FNV-1a over the parts: stable across platforms and runs.
  std::uint64_t h = 1469598103934665603ull;
  for (std::int64_t p : parts) {
    for (int k = 0; k < 8; ++k) {
      h ^= static_cast<std::uint64_t>(p >> (8 * k)) & 0xffu;
      h *= 1099511628211ull;
    }
  }
  return h;
}

bool names_word(const std::string& message, const std::string& name) {
  auto is_ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (std::size_t at = message.find(name); at != std::string::npos; at = message.find(name, at + 1)) {
    const bool left = at == 0 || !is_ident(message[at - 1]);
    const std::size_t end = at + name.size();
    const bool right = end == message.size() || !is_ident(message[end]);
    if (left && right) return true;
  }
  return false;
}

bool names_any(const std::string& message, const std::vector<std::string>& names) {
  for (const std::string& n : names)
    if (names_word(message, n)) return true;
  return false;
}

DeviceMirror::DeviceMirror(const HostTensor& host) : buffer(host.bytes.size()), view(host.view) {
  buffer.upload(host.bytes.data(), host.bytes.size());
  const auto offset = static_cast<const unsigned char*>(host.view.data) - host.bytes.data();
  view.data = buffer.data() + offset;
  view.device = Device::cuda(0);
}

void DeviceMirror::download_into(HostTensor& host) const { buffer.download(host.bytes.data(), host.bytes.size()); }

}  // namespace rmsnorm::testing
