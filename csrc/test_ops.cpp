// C++ checks of the marn ops through the dispatcher (run by ctest): APGRU against ATen's GRU,
// padding semantics, the backward against finite differences, the lookup against at::bucketize,
// and the input checks. Exit status = number of failed checks.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

template <typename Error>
void expect_throws(const std::function<void()>& call, const std::string& needle,
                   const std::string& what) {
  try {
    call();
  } catch (const Error& e) {
    const bool named = std::string(e.what()).find(needle) != std::string::npos;
    expect(named, what + " (message names '" + needle + "')");
    return;
  } catch (const std::exception& e) {
    expect(false, what + ": wrong exception type: " + e.what());
    return;
  }
  expect(false, what + ": no exception");
}

using T = const at::Tensor&;

auto sequence_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("marn::apgru_sequence", "")
      .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(T, T, T, T, T, T, T, T, T, bool)>();
}

auto sequence_backward_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("marn::apgru_sequence_backward", "")
      .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                        at::Tensor, at::Tensor>(T, T, T, T, T, T, T, T, T, T)>();
}

auto lookup_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("marn::multi_granularity_embedding", "")
      .typed<std::tuple<at::Tensor, at::Tensor>(T, at::TensorList, at::TensorList)>();
}

struct Apgru {
  int64_t batch = 3, time = 4, input = 5, hidden = 6, property = 2;
  at::TensorOptions options = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({batch, time, input}, options);
  at::Tensor prop = at::randn({batch, time, property}, options);
  at::Tensor h0 = at::randn({batch, hidden}, options);
  at::Tensor weight_ih = at::randn({3 * hidden, input}, options) * 0.5;
  at::Tensor weight_hh = at::randn({3 * hidden, hidden}, options) * 0.5;
  at::Tensor bias_ih = at::randn({3 * hidden}, options);
  at::Tensor bias_hh = at::randn({3 * hidden}, options);
  at::Tensor weight_pz = at::randn({hidden, property}, options);

  std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const at::Tensor& lengths,
                                                     const at::Tensor& start) const {
    return sequence_op().call(x, prop, lengths, start, weight_ih, weight_hh, bias_ih, bias_hh,
                              weight_pz, /*save_workspace=*/true);
  }
};

void test_matches_aten_gru() {
  Apgru a;
  a.weight_pz.zero_();
  const at::Tensor lengths = at::full({a.batch}, a.time, at::kLong);
  const auto [out, h_last, workspace] = a.run(lengths, a.h0);
  const auto [gru_out, gru_h] =
      at::gru(a.x, a.h0.unsqueeze(0), {a.weight_ih, a.weight_hh, a.bias_ih, a.bias_hh},
              /*has_biases=*/true, /*num_layers=*/1, /*dropout=*/0.0, /*train=*/false,
              /*bidirectional=*/false, /*batch_first=*/true);
  // float64, the same math in another summation order: a few ulp of values of order 1.
  const double out_error = (out - gru_out).abs().max().item<double>();
  const double h_error = (h_last - gru_h.squeeze(0)).abs().max().item<double>();
  std::ostringstream message;
  message << "apgru_sequence with P_z = 0 equals at::gru (worst error: out " << out_error
          << ", h_last " << h_error << ")";
  expect(out_error < 1e-14 && h_error < 1e-14, message.str());
}

void test_padding() {
  Apgru a;
  const at::Tensor lengths = at::tensor({int64_t{4}, int64_t{0}, int64_t{2}});
  const auto [out, h_last, workspace] = a.run(lengths, a.h0);
  expect(out[1].abs().max().item<double>() == 0.0, "length 0: every output is zero");
  expect(at::equal(h_last[1], a.h0[1]), "length 0: h_last is h0");
  expect(out[2].narrow(0, 2, 2).abs().max().item<double>() == 0.0, "padded steps output zero");
  expect(at::equal(h_last[2], out[2][1]), "h_last is the state after the last valid step");
}

void test_backward_h0_against_finite_differences() {
  Apgru a;
  const at::Tensor lengths = at::tensor({int64_t{4}, int64_t{1}, int64_t{3}});
  const at::Tensor out_weight = at::randn({a.batch, a.time, a.hidden}, a.options);
  const at::Tensor h_weight = at::randn({a.batch, a.hidden}, a.options);
  const auto loss = [&](const at::Tensor& start) {
    const auto [out, h_last, workspace] = a.run(lengths, start);
    return (out * out_weight).sum().item<double>() + (h_last * h_weight).sum().item<double>();
  };
  const auto [out, h_last, workspace] = a.run(lengths, a.h0);
  const auto grads = sequence_backward_op().call(out_weight, h_weight, a.x, a.prop, lengths, a.h0,
                                                 a.weight_ih, a.weight_hh, a.weight_pz, workspace);
  const at::Tensor grad_h0 = std::get<2>(grads);
  double worst = 0.0;
  const double step = 1e-6;
  for (int64_t i = 0; i < a.h0.numel(); ++i) {
    at::Tensor up = a.h0.clone(), down = a.h0.clone();
    up.view(-1)[i] += step;
    down.view(-1)[i] -= step;
    const double numeric = (loss(up) - loss(down)) / (2 * step);
    worst = std::max(worst, std::abs(numeric - grad_h0.view(-1)[i].item<double>()));
  }
  std::ostringstream message;
  message << "grad_h0 matches central differences (worst error " << worst << ")";
  // Central differences, step 1e-6, float64: rounding eps*|loss|/step ~ 1e-9 dominates truncation (~1e-12).
  expect(worst < 1e-8, message.str());
}

// Padded positions of x, prop and grad_out are never read: NaN there changes no bit of any result.
void test_padding_is_never_read() {
  Apgru a;
  const at::Tensor lengths = at::tensor({int64_t{4}, int64_t{0}, int64_t{2}});
  const at::Tensor grad_out = at::randn({a.batch, a.time, a.hidden}, a.options);
  const at::Tensor grad_h_last = at::randn({a.batch, a.hidden}, a.options);
  const auto run = [&](const Apgru& inputs, const at::Tensor& upstream) {
    const auto [out, h_last, workspace] = inputs.run(lengths, inputs.h0);
    const auto grads = sequence_backward_op().call(upstream, grad_h_last, inputs.x, inputs.prop,
                                                   lengths, inputs.h0, inputs.weight_ih,
                                                   inputs.weight_hh, inputs.weight_pz, workspace);
    return std::vector<at::Tensor>{out, h_last, std::get<0>(grads), std::get<1>(grads),
                                   std::get<2>(grads), std::get<3>(grads), std::get<4>(grads),
                                   std::get<5>(grads), std::get<6>(grads), std::get<7>(grads)};
  };
  Apgru poisoned = a;
  poisoned.x = a.x.clone();
  poisoned.prop = a.prop.clone();
  at::Tensor poisoned_grad_out = grad_out.clone();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const at::Tensor& t : {poisoned.x, poisoned.prop, poisoned_grad_out}) {
    t[1].fill_(nan);
    t[2].narrow(0, 2, 2).fill_(std::numeric_limits<double>::infinity());
  }
  const std::vector<at::Tensor> clean = run(a, grad_out);
  const std::vector<at::Tensor> dirty = run(poisoned, poisoned_grad_out);
  bool identical = true;
  for (size_t k = 0; k < clean.size(); ++k) identical = identical && at::equal(clean[k], dirty[k]);
  expect(identical, "NaN/inf at padded positions of x, prop and grad_out change no output or gradient");
}

void test_lookup_matches_bucketize() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const at::Tensor values =
      at::tensor({0.5, nan, 1.0, -inf, inf, 0.25, 2.0, 0.0}, at::kDouble).view({4, 2});
  const std::vector<at::Tensor> boundaries = {
      at::tensor({0.0, 1.0, 2.0, -1.0, 0.0, 0.5}, at::kDouble).view({2, 3}),
      at::tensor({1.0, 0.3}, at::kDouble).view({2, 1})};
  const std::vector<at::Tensor> tables = {at::randn({2 * 5, 3}), at::randn({2 * 3, 3})};
  const auto [out, rows] = lookup_op().call(values, boundaries, tables);
  bool all_equal = true;
  for (int64_t k = 0; k < 2; ++k) {
    const at::Tensor column = values.select(1, k).contiguous();
    for (int64_t g = 0; g < 2; ++g) {
      const int64_t bins = boundaries[g].size(1) + 1;
      at::Tensor bucket = at::bucketize(column, boundaries[g][k], /*out_int32=*/false, /*right=*/false);
      bucket = at::where(column.isnan(), at::full_like(bucket, bins), bucket);
      const at::Tensor expected = at::embedding(tables[g], bucket + k * (bins + 1));
      all_equal = all_equal && at::equal(out.select(1, k * 2 + g), expected);
    }
  }
  expect(all_equal, "lookup equals bucketize + embedding, with NaN, +-inf and boundary values");
}

void test_bad_inputs() {
  Apgru a;
  const at::Tensor lengths = at::full({a.batch}, a.time, at::kLong);
  expect_throws<c10::ValueError>(
      [&] {
        sequence_op().call(a.x, a.prop, lengths, a.h0, a.weight_ih, a.weight_hh.narrow(1, 0, 5),
                           a.bias_ih, a.bias_hh, a.weight_pz, true);
      },
      "weight_hh", "wrong weight_hh shape");
  expect_throws<c10::IndexError>(
      [&] { a.run(at::full({a.batch}, a.time + 1, at::kLong), a.h0); }, "lengths",
      "lengths beyond time");
  expect_throws<c10::TypeError>(
      [&] { a.run(lengths.to(at::kInt), a.h0); }, "lengths", "lengths of the wrong dtype");
  const at::Tensor values = at::zeros({2, 1}, at::kDouble);
  expect_throws<c10::ValueError>(
      [&] {
        lookup_op().call(values, {at::tensor({1.0, 0.0}, at::kDouble).view({1, 2})},
                         {at::zeros({4, 2})});
      },
      "sorted", "unsorted boundaries");
  expect_throws<c10::ValueError>(
      [&] {
        lookup_op().call(values, {at::tensor({0.0, 1.0}, at::kDouble).view({1, 2})},
                         {at::zeros({3, 2})});
      },
      "tables[0]", "table with too few rows");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_matches_aten_gru();
  test_padding();
  test_backward_h0_against_finite_differences();
  test_padding_is_never_read();
  test_lookup_matches_bucketize();
  test_bad_inputs();
  std::cout << failures << " failed\n";
  return failures;
}
