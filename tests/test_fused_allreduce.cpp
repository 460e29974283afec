// fused_allreduce_add_forward: the ranks' partials summed, the residual added and the row
// normalised in one pass. r_out is checked bit for bit against a model of its arithmetic
// written here (the partials added in fp32 in rank order, then the residual, one rounding),
// and y and rstd against fused_add_forward of that r_out (already checked against the fp64
// oracle by test_fused_forward.cpp), on both backends. Then one rank against
// fused_add_forward itself, and the refusals.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "backend_test.h"
#include "support.h"

namespace rmsnorm {
namespace {

using reference::HostTensor;
using testing::make_tensor;
using testing::make_vector;

// A (1, rows, cols) view of random values, rows `pad` elements apart beyond cols, the first
// `lead` elements past the buffer's 16-byte aligned start.
HostTensor random_rows(DType t, std::int64_t rows, std::int64_t cols, std::uint64_t seed, std::int64_t pad,
                       std::int64_t lead = 0) {
  HostTensor h = make_tensor(t, 1, rows, cols, -1, cols + pad, lead, 4);
  reference::fill_normal(h.view, seed);
  return h;
}

// The element i of row r of a (1, rows, cols) view.
std::int64_t at(const TensorView& v, std::int64_t r, std::int64_t j) { return r * v.row_stride + j; }

// One call's inputs: `ranks` partials of x's dtype (one layout for all), the residual, a
// weight.
struct Inputs {
  std::vector<HostTensor> partials;
  HostTensor residual, weight;
  std::vector<TensorView> views() const {
    std::vector<TensorView> v;
    for (const HostTensor& h : partials) v.push_back(h.view);
    return v;
  }
};

// The layouts of a call's rows: padded so that every row is 16-byte aligned (whole-chunk
// loads where cols allow), padded by odd counts (element loads), or aligned but for the last
// partial, whose buffer starts an element off (element loads for every array).
enum class Layout { aligned, odd_pads, misaligned_partial };
const char* layout_name(Layout l) {
  return l == Layout::aligned ? "aligned" : l == Layout::odd_pads ? "odd pads" : "last partial misaligned";
}
std::int64_t pad_of(Layout l, std::int64_t odd) { return l == Layout::odd_pads ? odd : 8; }

Inputs make_inputs(DType x, DType r, int ranks, std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                   Layout layout = Layout::odd_pads) {
  Inputs in;
  for (int k = 0; k < ranks; ++k)
    in.partials.push_back(random_rows(x, rows, cols, seed + k, pad_of(layout, 3),
                                      layout == Layout::misaligned_partial && k == ranks - 1 ? 1 : 0));
  in.residual = random_rows(r, rows, cols, seed + 100, pad_of(layout, 1));
  in.weight = make_vector(x, cols);
  reference::fill_normal(in.weight.view, seed + 200, 1.0, 0.3);
  return in;
}

// Calls f(views) with views of `tensors` on backend b: the host tensors' own on the CPU; on
// CUDA, those of device copies, one allocation each (as the peers' buffers are), whose bytes
// are copied back into the host tensors after the call.
template <class F>
void on_backend(testing::Backend b, const std::vector<HostTensor*>& tensors, F&& f) {
  std::vector<TensorView> views;
  std::vector<std::unique_ptr<testing::DeviceMirror>> mirrors;
  for (HostTensor* t : tensors) {
    if (b == testing::Backend::cuda) mirrors.push_back(std::make_unique<testing::DeviceMirror>(*t));
    views.push_back(b == testing::Backend::cuda ? mirrors.back()->view : t->view);
  }
  f(views);
  if (b != testing::Backend::cuda) return;
  testing::device_synchronize();
  for (std::size_t i = 0; i < tensors.size(); ++i) mirrors[i]->download_into(*tensors[i]);
}

// r_out as its definition states it: sum the partials in rank order in the accumulator
// (fp32; fp64 for f64), add the residual, round once to the residual's dtype.
std::vector<double> model_r_out(const Inputs& in, DType x, DType r) {
  const TensorView& v0 = in.partials[0].view;
  std::vector<double> out;
  for (std::int64_t i = 0; i < v0.rows; ++i)
    for (std::int64_t j = 0; j < v0.cols; ++j) {
      const auto load = [&](const TensorView& v, DType t) { return load_as_double(v.data, t, at(v, i, j)); };
      if (x == DType::f64) {
        double s = load(v0, x);
        for (std::size_t k = 1; k < in.partials.size(); ++k) s += load(in.partials[k].view, x);
        out.push_back(s + load(in.residual.view, r));
      } else {
        float s = static_cast<float>(load(v0, x));
        for (std::size_t k = 1; k < in.partials.size(); ++k) s += static_cast<float>(load(in.partials[k].view, x));
        s += static_cast<float>(load(in.residual.view, r));
        out.push_back(reference::round_to(r, s));
      }
    }
  return out;
}

// On each backend, every strategy's prologue: rows of a warp, of a block, of a cluster (sm_90)
// and, forced on CUDA, streamed (long_row), at every layout.
using FusedAllReduce = testing::BackendTest;

TEST_P(FusedAllReduce, SumsThePartialsInRankOrderThenNormalises) {
  const bool cuda = backend() == testing::Backend::cuda;
  for (DType x : dtypes())
    for (bool f32_residual : {false, true})
      for (int ranks : {2, 3, 8, 16})
        for (Cast cast : {Cast::fp32, Cast::llama})
          for (std::int64_t cols : {1, 7, 100, 4096, 20000, 70000})
            for (Layout layout : {Layout::aligned, Layout::odd_pads, Layout::misaligned_partial})
              for (Strategy strategy : {Strategy::automatic, Strategy::long_row}) {
                if (f32_residual && (x == DType::f32 || x == DType::f64)) continue;
                if (strategy == Strategy::long_row && (!cuda || cols > 4096)) continue;
                if (!cuda && layout != Layout::odd_pads) continue;  // the CPU reads every layout alike
                const DType r = f32_residual ? DType::f32 : x;
                const std::int64_t rows = 5;
                Inputs in =
                    make_inputs(x, r, ranks, rows, cols,
                                testing::seed_of({static_cast<int>(x), ranks, cols, static_cast<int>(layout)}), layout);
                const std::string what = std::string(dtype_name(x)) + " r " + dtype_name(r) + " ranks " +
                                         std::to_string(ranks) + (cast == Cast::llama ? " llama" : " fp32") + " cols " +
                                         std::to_string(cols) + " " + layout_name(layout) + " " +
                                         strategy_name(strategy);
                HostTensor y = make_tensor(x, 1, rows, cols, -1, cols + pad_of(layout, 2), 0, 4);
                HostTensor r_out = make_tensor(r, 1, rows, cols, -1, cols + pad_of(layout, 1), 0, 4);
                HostTensor rstd = make_vector(x == DType::f64 ? DType::f64 : DType::f32, rows, 0, 4);
                Params p;
                p.cast = cast;
                p.weight_offset = cast == Cast::llama ? 1.0 : 0.0;
                p.strategy = strategy;
                std::vector<HostTensor*> tensors;
                for (HostTensor& h : in.partials) tensors.push_back(&h);
                for (HostTensor* h : {&in.residual, &in.weight, &y, &r_out, &rstd}) tensors.push_back(h);
                on_backend(backend(), tensors, [&](const std::vector<TensorView>& v) {
                  const std::size_t n = in.partials.size();
                  fused_allreduce_add_forward(v.data(), n, v[n], v[n + 1], v[n + 2], v[n + 3], p, v[n + 4]);
                });

                const std::vector<double> want = model_r_out(in, x, r);
                for (std::int64_t i = 0; i < rows; ++i)
                  for (std::int64_t j = 0; j < cols; ++j)
                    ASSERT_EQ(load_as_double(r_out.view.data, r, at(r_out.view, i, j)), want[i * cols + j])
                        << what << ": r_out[" << i << "][" << j << "] is not the partials' sum plus the residual";
                EXPECT_EQ(reference::count_stray_writes(r_out.bytes, r_out.view), 0) << what;
                EXPECT_EQ(reference::count_stray_writes(y.bytes, y.view), 0) << what;

                // y and rstd: the residual add's on the same backend, of a zero x and that
                // r_out as the residual (0 + v is v exactly, and the zero has x's dtype, the
                // Llama cast's).
                HostTensor zero = make_tensor(x, 1, rows, cols);
                for (std::int64_t i = 0; i < rows * cols; ++i) store_from_double(zero.view.data, x, i, 0.0);
                HostTensor r_copy = r_out, r_out2 = make_tensor(r, 1, rows, cols, -1, cols + 1);
                r_copy.view.data =
                    r_copy.bytes.data() + (static_cast<unsigned char*>(r_out.view.data) - r_out.bytes.data());
                HostTensor y2 = make_tensor(x, 1, rows, cols, -1, cols + 2);
                HostTensor rstd2 = make_vector(x == DType::f64 ? DType::f64 : DType::f32, rows);
                on_backend(backend(), {&zero, &r_copy, &in.weight, &y2, &r_out2, &rstd2},
                           [&](const std::vector<TensorView>& v) {
                             fused_add_forward(v[0], v[1], v[2], v[3], v[4], p, v[5]);
                           });
                for (std::int64_t i = 0; i < rows; ++i)
                  for (std::int64_t j = 0; j < cols; ++j)
                    ASSERT_EQ(load_as_double(y.view.data, x, at(y.view, i, j)),
                              load_as_double(y2.view.data, x, at(y2.view, i, j)))
                        << what << ": y[" << i << "][" << j << "] is not the norm of r_out";
                for (std::int64_t i = 0; i < rows; ++i)
                  ASSERT_EQ(load_as_double(rstd.view.data, rstd.view.dtype, i),
                            load_as_double(rstd2.view.data, rstd2.view.dtype, i))
                      << what << ": rstd[" << i << "]";
              }
}

INSTANTIATE_TEST_SUITE_P(, FusedAllReduce, ::testing::Values(testing::Backend::cpu, testing::Backend::cuda),
                         [](const ::testing::TestParamInfo<testing::Backend>& info) {
                           return std::string(testing::backend_name(info.param));
                         });

// One rank: its sum is its partial, and the call is fused_add_forward bit for bit, in place
// (residual_out == residual) or not, on either backend.
using FusedAllReduceOneRank = testing::BackendTest;

TEST_P(FusedAllReduceOneRank, IsTheResidualAdd) {
  for (DType x : dtypes())
    for (bool in_place : {false, true})
      for (std::int64_t cols : {3, 1024, 5000}) {
        const std::int64_t rows = 7;
        const Inputs in = make_inputs(x, x, 1, rows, cols, testing::seed_of({static_cast<int>(x), cols, 7}));
        const std::string what =
            std::string(dtype_name(x)) + (in_place ? " in place" : "") + " cols " + std::to_string(cols);
        std::vector<HostTensor> y(2), r_out(2);
        for (int call = 0; call < 2; ++call) {  // 0: fused_allreduce_add_forward, 1: fused_add_forward
          HostTensor residual = in.residual;
          residual.view.data =
              residual.bytes.data() + (static_cast<unsigned char*>(in.residual.view.data) - in.residual.bytes.data());
          y[call] = make_tensor(x, 1, rows, cols);
          r_out[call] = in_place ? residual : make_tensor(x, 1, rows, cols, -1, cols + 1);
          if (backend() == testing::Backend::cpu) {
            const TensorView ro = in_place ? residual.view : r_out[call].view;
            if (call == 0)
              fused_allreduce_add_forward(&in.partials[0].view, 1, residual.view, in.weight.view, y[call].view, ro);
            else
              fused_add_forward(in.partials[0].view, residual.view, in.weight.view, y[call].view, ro);
            if (in_place) r_out[call] = residual;
          } else {
            testing::DeviceMirror xd(in.partials[0]), rd(residual), wd(in.weight), yd(y[call]), rod(r_out[call]);
            const TensorView ro = in_place ? rd.view : rod.view;
            if (call == 0)
              fused_allreduce_add_forward(&xd.view, 1, rd.view, wd.view, yd.view, ro);
            else
              fused_add_forward(xd.view, rd.view, wd.view, yd.view, ro);
            testing::device_synchronize();
            yd.download_into(y[call]);
            if (in_place)
              rd.download_into(r_out[call]);
            else
              rod.download_into(r_out[call]);
          }
        }
        EXPECT_EQ(y[0].bytes, y[1].bytes) << what << ": y";
        EXPECT_EQ(r_out[0].bytes, r_out[1].bytes) << what << ": r_out";
      }
}

INSTANTIATE_TEST_SUITE_P(, FusedAllReduceOneRank, ::testing::Values(testing::Backend::cpu, testing::Backend::cuda),
                         [](const ::testing::TestParamInfo<testing::Backend>& info) {
                           return std::string(testing::backend_name(info.param));
                         });

// Bad arguments: a named error, and nothing written.
TEST(FusedAllReduceArguments, RefusesBadArgumentsByName) {
  const std::int64_t rows = 4, cols = 64;
  const Inputs in = make_inputs(DType::bf16, DType::bf16, 3, rows, cols, 11);
  struct Case {
    std::string what, name;
    Code code;
    std::vector<TensorView> parts;
    std::size_t count;
    bool y_is_partial0 = false, r_out_is_partial1 = false, bad_residual_shape = false;
  };
  std::vector<TensorView> good = in.views();
  std::vector<Case> cases;
  cases.push_back({"no partials", "partials", Code::invalid_argument, good, 0});
  cases.push_back({"too many partials", "partials", Code::invalid_argument,
                   std::vector<TensorView>(kMaxAllReduceRanks + 1, good[0]), kMaxAllReduceRanks + 1});
  {
    std::vector<TensorView> v = good;
    v[1].rows = rows - 1;
    cases.push_back({"a partial's shape", "partials[1]", Code::invalid_argument, v, v.size()});
  }
  {
    std::vector<TensorView> v = good;
    v[2].dtype = DType::f16;
    cases.push_back({"a partial's dtype", "partials[2]", Code::unsupported, v, v.size()});
  }
  {
    std::vector<TensorView> v = good;
    v[1].row_stride = cols;  // inside its buffer, another layout
    cases.push_back({"a partial's strides", "partials[1]", Code::invalid_argument, v, v.size()});
  }
  {
    Case c{"y aliasing partials[0]", "y: overlaps partials[0]", Code::invalid_argument, good, good.size()};
    c.y_is_partial0 = true;
    cases.push_back(c);
  }
  {
    Case c{"residual_out overlapping partials[1]", "residual_out: overlaps partials[1]", Code::invalid_argument, good,
           good.size()};
    c.r_out_is_partial1 = true;
    cases.push_back(c);
  }
  {
    Case c{"the residual's shape, named against partials[0]", "partials[0]", Code::invalid_argument, good, good.size()};
    c.bad_residual_shape = true;
    cases.push_back(c);
  }
  for (const Case& c : cases) {
    HostTensor y = make_tensor(DType::bf16, 1, rows, cols), r_out = make_tensor(DType::bf16, 1, rows, cols);
    TensorView residual = in.residual.view;
    if (c.bad_residual_shape) residual.cols = cols - 1;
    const TensorView yv = c.y_is_partial0 ? c.parts[0] : y.view;
    TensorView rov = r_out.view;
    if (c.r_out_is_partial1) rov = c.parts[1];
    const std::vector<unsigned char> before = in.partials[0].bytes;
    const Status s = fused_allreduce_add_forward_status(c.count == 0 ? nullptr : c.parts.data(), c.count, residual,
                                                        in.weight.view, yv, rov);
    EXPECT_EQ(s.code, c.code) << c.what << ": " << s.message;
    EXPECT_NE(s.message.find(c.name), std::string::npos)
        << c.what << ": the message does not name " << c.name << ": " << s.message;
    if (c.bad_residual_shape) {
      EXPECT_FALSE(testing::names_word(s.message, "x")) << c.what << ": names x: " << s.message;
    }
    EXPECT_TRUE(testing::all_poisoned(y.bytes)) << c.what << ": y written";
    EXPECT_TRUE(testing::all_poisoned(r_out.bytes)) << c.what << ": r_out written";
    EXPECT_EQ(in.partials[0].bytes, before) << c.what << ": partials[0] written";
  }
}

}  // namespace
}  // namespace rmsnorm
