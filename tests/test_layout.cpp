// Layout invariance, on the CPU backend and (when a device is there) the CUDA backend: on
// the automatic plan, a row's output bits depend only on its values, its length, the
// dtypes and the parameters, never on the number of rows, the row's position, its row
// stride, the batch stride or its address's alignment. The same six rows are placed in a
// contiguous 16-byte-aligned matrix, one by one, at an odd element offset, in a strided
// view, in a (tokens, heads, head_dim) slice of a fused QKV buffer, and beside a misaligned
// weight; y and rstd (forward) and dx (backward) of each row must be the same bytes in
// every one. Row lengths cover every strategy the planner picks (warp_rows, block_row,
// cluster_row, long_row), each at a multiple of the 16-byte chunk (the aligned loads) and
// off it (the element-wise ones).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend_test.h"
#include "forward_case.h"
#include "harness.h"
#include "support.h"

namespace rmsnorm::testing {
namespace {

constexpr std::int64_t kRows = 6;  // also 3 tokens x 2 heads in the QKV slice

struct Layout {
  std::string name;
  std::int64_t batch, rows;
  std::int64_t batch_stride, row_stride;  // elements; -1: contiguous
  std::int64_t lead;                      // elements before the first row
  std::int64_t w_lead = 0;                // elements before the weight
};

// The layouts of kRows rows of `cols`. "alone" is handled by the runner (a call per row).
std::vector<Layout> layouts(std::int64_t cols) {
  const std::int64_t heads = 2, tokens = kRows / heads;
  return {
      {"contiguous", 1, kRows, -1, -1, 0},
      {"odd offset", 1, kRows, -1, -1, 1},
      {"row stride cols+3", 1, kRows, -1, cols + 3, 0},
      {"batched, strides cols+1", 2, kRows / 2, (kRows / 2) * (cols + 1) + 5, cols + 1, 0},
      // The k slice of a (tokens, 3 * heads, head_dim) QKV buffer: row (t, h) at
      // t * 3 * heads * cols + heads * cols + h * cols.
      {"qkv k slice", tokens, heads, 3 * heads * cols, cols, heads * cols},
      {"misaligned weight", 1, kRows, -1, -1, 0, 1},
  };
}

// Element offset of row r in a layout's view.
std::int64_t row_at(const TensorView& v, std::int64_t r) {
  return (r / v.rows) * v.batch_stride + (r % v.rows) * v.row_stride;
}

void put_rows(const HostTensor& src, HostTensor& dst) {
  const std::size_t es = dtype_size(src.view.dtype), row_bytes = static_cast<std::size_t>(src.view.cols) * es;
  for (std::int64_t r = 0; r < src.view.total_rows(); ++r)
    std::memcpy(static_cast<unsigned char*>(dst.view.data) + row_at(dst.view, r) * static_cast<std::int64_t>(es),
                static_cast<const unsigned char*>(src.view.data) + row_at(src.view, r) * static_cast<std::int64_t>(es),
                row_bytes);
}

std::vector<unsigned char> row_bytes(const HostTensor& t, std::int64_t r) {
  const std::size_t es = dtype_size(t.view.dtype);
  const auto* p = static_cast<const unsigned char*>(t.view.data) + row_at(t.view, r) * static_cast<std::int64_t>(es);
  return {p, p + static_cast<std::size_t>(t.view.cols) * es};
}

HostTensor place(DType t, const Layout& l, std::int64_t cols) {
  return make_tensor(t, l.batch, l.rows, cols, l.batch_stride, l.row_stride, l.lead, 2);
}

// Calls `f` with views of the host tensors on the backend (device mirrors on CUDA), then
// brings back the outputs.
template <class F>
void on_backend(Backend b, std::vector<HostTensor*> inputs, std::vector<HostTensor*> outputs, F&& f) {
  if (b == Backend::cpu) {
    std::vector<TensorView> in, out;
    for (HostTensor* t : inputs) in.push_back(t->view);
    for (HostTensor* t : outputs) out.push_back(t->view);
    f(in, out);
    return;
  }
  std::vector<std::unique_ptr<DeviceMirror>> in_d, out_d;
  std::vector<TensorView> in, out;
  for (HostTensor* t : inputs) in_d.push_back(std::make_unique<DeviceMirror>(*t)), in.push_back(in_d.back()->view);
  for (HostTensor* t : outputs) out_d.push_back(std::make_unique<DeviceMirror>(*t)), out.push_back(out_d.back()->view);
  f(in, out);
  device_synchronize();
  for (std::size_t i = 0; i < outputs.size(); ++i) out_d[i]->download_into(*outputs[i]);
}

// Row lengths: 16-byte chunks of the x dtype (vw elements) in every strategy's range, a
// multiple of the chunk and one off it.
std::vector<std::int64_t> lengths(DType x) {
  const std::int64_t vw = 16 / static_cast<std::int64_t>(dtype_size(x));
  return {1, 7, 64, 127, 1000, 4096, 8191, 6000 * vw, 6000 * vw + 5, 33000 * vw, 33000 * vw + 3};
}

using Layouts = testing::BackendTest;

struct Outputs {
  std::vector<std::vector<unsigned char>> rows;  // y (forward) or dx (backward) per row
  std::vector<std::vector<unsigned char>> rstd;  // per row (forward)
};

// y and rstd of the rows of `data` in one layout (or alone: a call per row).
Outputs forward_in(Backend b, const Combo& c, const Params& p, const HostTensor& data, const HostTensor& w_data,
                   const Layout* l) {
  const std::int64_t cols = data.view.cols;
  const DType rt = c.x == DType::f64 ? DType::f64 : DType::f32;
  Outputs out;
  const auto run = [&](HostTensor& x, HostTensor& y, HostTensor& r, std::optional<HostTensor>& w) {
    std::vector<HostTensor*> in = {&x};
    if (w) in.push_back(&*w);
    on_backend(b, in, {&y, &r}, [&](const std::vector<TensorView>& i, const std::vector<TensorView>& o) {
      forward(i[0], w ? std::optional<TensorView>(i[1]) : std::nullopt, o[0], p, o[1]);
    });
  };
  const auto weight = [&](std::int64_t lead) {
    std::optional<HostTensor> w;
    if (c.w) {
      w = make_vector(*c.w, cols, lead);
      std::memcpy(w->view.data, w_data.view.data, static_cast<std::size_t>(cols) * dtype_size(*c.w));
    }
    return w;
  };
  if (!l) {  // each row alone
    for (std::int64_t r = 0; r < kRows; ++r) {
      HostTensor x = make_tensor(c.x, 1, 1, cols), y = make_tensor(c.y, 1, 1, cols), rs = make_vector(rt, 1);
      std::memcpy(x.view.data, row_bytes(data, r).data(), row_bytes(data, r).size());
      std::optional<HostTensor> w = weight(0);
      run(x, y, rs, w);
      out.rows.push_back(row_bytes(y, 0));
      out.rstd.emplace_back(static_cast<unsigned char*>(rs.view.data),
                            static_cast<unsigned char*>(rs.view.data) + dtype_size(rt));
    }
    return out;
  }
  HostTensor x = place(c.x, *l, cols), y = place(c.y, *l, cols), rs = make_vector(rt, kRows);
  put_rows(data, x);
  std::optional<HostTensor> w = weight(l->w_lead);
  run(x, y, rs, w);
  for (std::int64_t r = 0; r < kRows; ++r) {
    out.rows.push_back(row_bytes(y, r));
    const auto* p0 = static_cast<unsigned char*>(rs.view.data) + r * static_cast<std::int64_t>(dtype_size(rt));
    out.rstd.emplace_back(p0, p0 + dtype_size(rt));
  }
  return out;
}

// dx of the rows (dy and x placed alike) in one layout, or alone.
Outputs backward_in(Backend b, DType xt, const std::optional<DType>& wt, const Params& p, const HostTensor& xs,
                    const HostTensor& dys, const HostTensor& w_data, const Layout* l) {
  const std::int64_t cols = xs.view.cols;
  Outputs out;
  const auto run = [&](HostTensor& x, HostTensor& dy, HostTensor& dx, std::optional<HostTensor>& w) {
    std::vector<HostTensor*> in = {&x, &dy};
    if (w) in.push_back(&*w);
    on_backend(b, in, {&dx}, [&](const std::vector<TensorView>& i, const std::vector<TensorView>& o) {
      // dx only: dw sums over rows, so it depends on the rows by definition.
      const std::size_t bytes = backward_workspace_size(i[1], std::nullopt, p);
      std::vector<unsigned char> host_ws(b == Backend::cpu ? bytes + 1 : 1);
      std::unique_ptr<DeviceBuffer> dev_ws;
      void* ws = host_ws.data();
      if (b == Backend::cuda) {
        dev_ws = std::make_unique<DeviceBuffer>(bytes + 1);
        ws = dev_ws->data();
      }
      backward(i[1], i[0], w ? std::optional<TensorView>(i[2]) : std::nullopt, std::nullopt, o[0], std::nullopt, p, ws,
               bytes);
      if (b == Backend::cuda) device_synchronize();  // before the workspace is freed
    });
  };
  const auto weight = [&](std::int64_t lead) {
    std::optional<HostTensor> w;
    if (wt) {
      w = make_vector(*wt, cols, lead);
      std::memcpy(w->view.data, w_data.view.data, static_cast<std::size_t>(cols) * dtype_size(*wt));
    }
    return w;
  };
  if (!l) {
    for (std::int64_t r = 0; r < kRows; ++r) {
      HostTensor x = make_tensor(xt, 1, 1, cols), dy = make_tensor(xt, 1, 1, cols), dx = make_tensor(xt, 1, 1, cols);
      std::memcpy(x.view.data, row_bytes(xs, r).data(), row_bytes(xs, r).size());
      std::memcpy(dy.view.data, row_bytes(dys, r).data(), row_bytes(dys, r).size());
      std::optional<HostTensor> w = weight(0);
      run(x, dy, dx, w);
      out.rows.push_back(row_bytes(dx, 0));
    }
    return out;
  }
  HostTensor x = place(xt, *l, cols), dy = place(xt, *l, cols), dx = place(xt, *l, cols);
  put_rows(xs, x);
  put_rows(dys, dy);
  std::optional<HostTensor> w = weight(l->w_lead);
  run(x, dy, dx, w);
  for (std::int64_t r = 0; r < kRows; ++r) out.rows.push_back(row_bytes(dx, r));
  return out;
}

// Reports the first rows of `got` that differ from `want`; false when any does.
bool same_rows(const Outputs& want, const Outputs& got, const std::string& where) {
  int bad = 0;
  for (std::size_t r = 0; r < want.rows.size() && bad < 3; ++r) {
    if (want.rows[r] != got.rows[r]) {
      ADD_FAILURE() << where << ": row " << r << " differs from the contiguous layout's";
      ++bad;
    }
    if (r < want.rstd.size() && want.rstd[r] != got.rstd[r]) {
      ADD_FAILURE() << where << ": rstd of row " << r << " differs from the contiguous layout's";
      ++bad;
    }
  }
  return bad == 0;
}

TEST_P(Layouts, ForwardBitsDependOnTheRowOnly) {
  const Backend b = GetParam();
  int failures = 0;
  for (const Combo& c : allowed_combos(b))
    for (std::int64_t cols : lengths(c.x)) {
      HostTensor data = make_tensor(c.x, 1, kRows, cols);
      reference::fill_normal(data.view, seed_of({static_cast<int>(c.x), cols, 101}), 0.0, 2.0);
      HostTensor w_data = make_vector(c.w.value_or(DType::f32), cols);
      reference::fill_normal(w_data.view, seed_of({cols, 102}), 1.0, 0.5);
      for (Cast cast : {Cast::fp32, Cast::llama})
        for (double offset : {0.0, 1.0}) {
          if (!c.w && offset != 0.0) continue;         // no weight: offset must be 0
          if (offset != 0.0 && cols > 8191) continue;  // the offset is per element: short rows show it
          Params p;
          p.cast = cast;
          p.weight_offset = offset;
          const std::string where = std::string(backend_name(b)) + " " + c.name() + " cols=" + std::to_string(cols) +
                                    (cast == Cast::llama ? " llama" : " fp32") + " offset=" + std::to_string(offset);
          const std::vector<Layout> ls = layouts(cols);
          const Outputs want = forward_in(b, c, p, data, w_data, &ls[0]);
          EXPECT_FALSE(all_poisoned(want.rows[0])) << where;
          bool ok = same_rows(want, forward_in(b, c, p, data, w_data, nullptr), where + " alone");
          for (std::size_t i = 1; i < ls.size(); ++i)
            ok = same_rows(want, forward_in(b, c, p, data, w_data, &ls[i]), where + " " + ls[i].name) && ok;
          if (!ok && ++failures >= kMaxFailingCases) return;
        }
    }
}

TEST_P(Layouts, BackwardDxDependsOnTheRowOnly) {
  const Backend b = GetParam();
  int failures = 0;
  std::vector<DType> dtypes = {DType::f32, DType::f16, DType::bf16};
  if (b == Backend::cpu) dtypes.push_back(DType::f64);
  for (DType xt : dtypes)
    for (std::optional<DType> wt :
         {std::optional<DType>(xt), std::optional<DType>(DType::f32), std::optional<DType>(std::nullopt)}) {
      if (xt == DType::f64 && wt == DType::f32) continue;
      if (xt == DType::f32 && wt == DType::f32) continue;  // the same as x's dtype
      for (std::int64_t cols : lengths(xt)) {
        HostTensor xs = make_tensor(xt, 1, kRows, cols), dys = make_tensor(xt, 1, kRows, cols);
        reference::fill_normal(xs.view, seed_of({static_cast<int>(xt), cols, 103}), 0.0, 2.0);
        reference::fill_normal(dys.view, seed_of({static_cast<int>(xt), cols, 104}));
        HostTensor w_data = make_vector(wt.value_or(DType::f32), cols);
        reference::fill_normal(w_data.view, seed_of({cols, 105}), 1.0, 0.5);
        for (double offset : {0.0, 1.0}) {
          if (!wt && offset != 0.0) continue;
          if (offset != 0.0 && cols > 8191) continue;
          Params p;
          p.weight_offset = offset;
          const std::string where = std::string(backend_name(b)) + " backward x=" + dtype_name(xt) +
                                    " w=" + (wt ? dtype_name(*wt) : "none") + " cols=" + std::to_string(cols) +
                                    " offset=" + std::to_string(offset);
          const std::vector<Layout> ls = layouts(cols);
          const Outputs want = backward_in(b, xt, wt, p, xs, dys, w_data, &ls[0]);
          EXPECT_FALSE(all_poisoned(want.rows[0])) << where;
          bool ok = same_rows(want, backward_in(b, xt, wt, p, xs, dys, w_data, nullptr), where + " alone");
          for (std::size_t i = 1; i < ls.size(); ++i)
            ok = same_rows(want, backward_in(b, xt, wt, p, xs, dys, w_data, &ls[i]), where + " " + ls[i].name) && ok;
          if (!ok && ++failures >= kMaxFailingCases) return;
        }
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Backends, Layouts, ::testing::Values(Backend::cpu, Backend::cuda),
                         [](const ::testing::TestParamInfo<Backend>& i) { return backend_name(i.param); });

}  // namespace
}  // namespace rmsnorm::testing
