// BatchNorm for channels-last float32 CPU tensors, seen as P pixels x C channels (ldtune/batchnorm.py
// says why). Training: forward reads x twice (statistics, then y), backward reads x and dy twice (sums,
// then dx). Ops: torch.ops.ldtune.batch_norm_train (autograd in C++, so that a step runs no Python
// beyond the module's call) over batch_norm_train_forward / _backward; batch_norm_eval (one pass).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {
constexpr int64_t CHUNK = 256;  // pixels per partial sum: a fixed split, so results do not depend on threads

// Per chunk k of pixels, with d = a[p, c] - m[c] and e = b[p, c] (or d without b):
// part[k][0][c] = sum e, part[k][1][c] = sum d * e; then summed over chunks in order, in double.
template <int CT, bool HASB>
__attribute__((target_clones("avx2", "default")))
void sums_impl(const float* a, const float* b, const float* m, double* part, int64_t P, int64_t C_) {
  const int64_t C = CT ? CT : C_;
  const int64_t nchunk = (P + CHUNK - 1) / CHUNK;
  at::parallel_for(0, nchunk, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> s1(C), s2(C);
    float* S1 = s1.data();
    float* S2 = s2.data();
    for (int64_t k = k0; k < k1; ++k) {
      std::fill(s1.begin(), s1.end(), 0.f);
      std::fill(s2.begin(), s2.end(), 0.f);
      const int64_t r1 = std::min(P, (k + 1) * CHUNK);
      for (int64_t r = k * CHUNK; r < r1; ++r) {
        const float* ar = a + r * C;
        const float* br = HASB ? b + r * C : ar;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float d = ar[c] - m[c];
          const float e = HASB ? br[c] : d;
          S1[c] += e;
          S2[c] += d * e;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        part[(2 * k) * C + c] = S1[c];
        part[(2 * k + 1) * C + c] = S2[c];
      }
    }
  });
}

// y = (x - m) * s + t without g; y = g * s + (x - m) * u + t with g
template <int CT, bool HASG>
__attribute__((target_clones("avx2", "default")))
void affine_impl(const float* x, const float* g, const float* m, const float* s, const float* u, const float* t,
                 float* y, int64_t P, int64_t C_) {
  const int64_t C = CT ? CT : C_;
  at::parallel_for(0, P, 4 * CHUNK, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      const float* gr = HASG ? g + r * C : xr;
      float* yr = y + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c)
        yr[c] = HASG ? gr[c] * s[c] + (xr[c] - m[c]) * u[c] + t[c] : (xr[c] - m[c]) * s[c] + t[c];
    }
  });
}

template <typename F>
void by_width(int64_t C, F f) {  // compile the common widths with a fixed inner loop
  switch (C) {
    case 8: f(std::integral_constant<int, 8>()); break;
    case 16: f(std::integral_constant<int, 16>()); break;
    case 32: f(std::integral_constant<int, 32>()); break;
    case 64: f(std::integral_constant<int, 64>()); break;
    default: f(std::integral_constant<int, 0>());
  }
}

// (sum e, sum d * e) per channel, in double
std::vector<double> sums(const at::Tensor& a, const float* b, const float* m) {
  const int64_t C = a.size(1), P = a.numel() / C, nchunk = (P + CHUNK - 1) / CHUNK;
  std::vector<double> part(nchunk * 2 * C), out(2 * C, 0.0);
  by_width(C, [&](auto ct) {
    constexpr int W = decltype(ct)::value;
    if (b) sums_impl<W, true>(a.data_ptr<float>(), b, m, part.data(), P, C);
    else sums_impl<W, false>(a.data_ptr<float>(), b, m, part.data(), P, C);
  });
  for (int64_t k = 0; k < nchunk; ++k)
    for (int64_t i = 0; i < 2 * C; ++i) out[i] += part[k * 2 * C + i];
  return out;
}

at::Tensor affine(const at::Tensor& x, const float* g, const float* m, const float* s, const float* u,
                     const float* t) {
  const int64_t C = x.size(1), P = x.numel() / C;
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  by_width(C, [&](auto ct) {
    constexpr int W = decltype(ct)::value;
    if (g) affine_impl<W, true>(x.data_ptr<float>(), g, m, s, u, t, y.data_ptr<float>(), P, C);
    else affine_impl<W, false>(x.data_ptr<float>(), g, m, s, u, t, y.data_ptr<float>(), P, C);
  });
  return y;
}

void check(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "channels-last float32 CPU tensor expected");
}

// The CPU kernels of ldtune::batch_norm_train_forward / _backward, called through the dispatcher (so
// dispatch modes and the profiler see them).
// -> (y, mean, rstd); updates the running statistics (when given) as nn.BatchNorm2d does:
// r = (1 - momentum) r + momentum s, with the unbiased batch variance
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_op(const at::Tensor& x, const at::Tensor& weight,
                                                         const at::Tensor& bias,
                                                         const c10::optional<at::Tensor>& running_mean,
                                                         const c10::optional<at::Tensor>& running_var,
                                                         double momentum, double eps) {
  check(x);
  const int64_t C = x.size(1);
  const double P = static_cast<double>(x.numel() / C);
  TORCH_CHECK(P > 1, "BatchNorm needs more than one value per channel in training");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat && weight.numel() == C &&
                  bias.numel() == C, "weight, bias: float32 of one value per channel expected");
  const bool track = running_mean.has_value() && running_var.has_value();
  TORCH_CHECK(!track || (running_mean->is_contiguous() && running_var->is_contiguous() &&
                         running_mean->scalar_type() == at::kFloat && running_var->scalar_type() == at::kFloat),
              "running statistics: contiguous float32 expected");
  auto w = weight.contiguous(), b = bias.contiguous();
  auto mean = at::empty({C}, x.options()), rstd = at::empty({C}, x.options());
  std::vector<float> shift(x.data_ptr<float>(), x.data_ptr<float>() + C), scale(C);  // the first pixel
  auto s = sums(x, nullptr, shift.data());
  float *M = mean.data_ptr<float>(), *R = rstd.data_ptr<float>();
  float* RM = track ? running_mean->data_ptr<float>() : nullptr;
  float* RV = track ? running_var->data_ptr<float>() : nullptr;
  const float* Wp = w.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double dm = s[c] / P, v = std::max(s[C + c] / P - dm * dm, 0.0);
    M[c] = static_cast<float>(shift[c] + dm);
    R[c] = static_cast<float>(1.0 / std::sqrt(v + eps));
    scale[c] = Wp[c] * R[c];
    if (track) {
      RM[c] = static_cast<float>((1 - momentum) * RM[c] + momentum * M[c]);
      RV[c] = static_cast<float>((1 - momentum) * RV[c] + momentum * v * P / (P - 1));
    }
  }
  auto y = affine(x, nullptr, M, scale.data(), nullptr, b.data_ptr<float>());
  return {y, mean, rstd};
}

// -> (dx, or an empty tensor without input_grad, dweight, dbias)
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& dy_, const at::Tensor& x,
                                                          const at::Tensor& mean, const at::Tensor& rstd,
                                                          const at::Tensor& weight, bool input_grad) {
  TORCH_CHECK(dy_.scalar_type() == at::kFloat && dy_.sizes() == x.sizes(), "dy: float32 of x's shape expected");
  auto dy = dy_.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t C = x.size(1);
  const double P = static_cast<double>(x.numel() / C);
  auto w = weight.contiguous();
  const float *M = mean.data_ptr<float>(), *R = rstd.data_ptr<float>(), *Wp = w.data_ptr<float>();
  auto s = sums(x, dy.data_ptr<float>(), M);  // sum dy, sum (x - mean) dy
  auto dw = at::empty({C}, x.options()), db = at::empty({C}, x.options());
  float *DW = dw.data_ptr<float>(), *DB = db.data_ptr<float>();
  std::vector<float> a(C), u(C), t(C);
  for (int64_t c = 0; c < C; ++c) {
    DB[c] = static_cast<float>(s[c]);
    DW[c] = static_cast<float>(s[C + c] * R[c]);
    a[c] = Wp[c] * R[c];
    u[c] = static_cast<float>(-a[c] * R[c] * R[c] * s[C + c] / P);
    t[c] = static_cast<float>(-a[c] * s[c] / P);
  }
  if (!input_grad) return {at::empty({0}, x.options()), dw, db};  // x needs no gradient: no dx pass
  return {affine(x, dy.data_ptr<float>(), M, a.data(), u.data(), t.data()), dw, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(const at::Tensor& x, const at::Tensor& weight,
                                                           const at::Tensor& bias,
                                                           const c10::optional<at::Tensor>& running_mean,
                                                           const c10::optional<at::Tensor>& running_var,
                                                           double momentum, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ldtune::batch_norm_train_forward", "")
                       .typed<decltype(forward_op)>();
  return op.call(x, weight, bias, running_mean, running_var, momentum, eps);
}

class BatchNormTrain : public torch::autograd::Function<BatchNormTrain> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, const c10::optional<at::Tensor>& running_mean,
                            const c10::optional<at::Tensor>& running_var, double momentum, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, rstd] = call_forward(x, weight, bias, running_mean, running_var, momentum, eps);
    ctx->save_for_backward({x, mean, rstd, weight});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("ldtune::batch_norm_train_backward", "")
                         .typed<decltype(backward_op)>();
    auto saved = ctx->get_saved_variables();
    const bool input_grad = ctx->needs_input_grad(0);
    auto [dx, dw, db] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], input_grad);
    return {input_grad ? dx : at::Tensor(), dw, db, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor batch_norm_train_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     const c10::optional<at::Tensor>& running_mean,
                                     const c10::optional<at::Tensor>& running_var, double momentum, double eps) {
  return BatchNormTrain::apply(x, weight, bias, running_mean, running_var, momentum, eps);
}

// Eval mode (running statistics): y = (x - running_mean) * weight / sqrt(running_var + eps) + bias, one pass
at::Tensor batch_norm_eval_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var, double eps) {
  check(x);
  const int64_t C = x.size(1);
  for (const auto* t : {&weight, &bias, &running_mean, &running_var})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == C, "float32 of one value per channel expected");
  auto w = weight.contiguous(), b = bias.contiguous(), rm = running_mean.contiguous(), rv = running_var.contiguous();
  std::vector<float> scale(C);
  for (int64_t c = 0; c < C; ++c)
    scale[c] = static_cast<float>(w.data_ptr<float>()[c] / std::sqrt(static_cast<double>(rv.data_ptr<float>()[c]) + eps));
  return affine(x, nullptr, rm.data_ptr<float>(), scale.data(), nullptr, b.data_ptr<float>());
}

at::Tensor batch_norm_train_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                const c10::optional<at::Tensor>& running_mean,
                                const c10::optional<at::Tensor>& running_var, double momentum, double eps) {
  return std::get<0>(call_forward(x, weight, bias, running_mean, running_var, momentum, eps));
}
}  // namespace

TORCH_LIBRARY(ldtune, m) {
  // training-mode BatchNorm with batch statistics; updates the running statistics when given
  m.def("batch_norm_train(Tensor x, Tensor weight, Tensor bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, float momentum, float eps) -> Tensor");
  m.def("batch_norm_train_forward(Tensor x, Tensor weight, Tensor bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor)");
  // eval-mode BatchNorm, without autograd: for frozen layers and evaluation under no_grad
  m.def("batch_norm_eval(Tensor x, Tensor weight, Tensor bias, Tensor running_mean, Tensor running_var, "
        "float eps) -> Tensor");
  m.def("batch_norm_train_backward(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor weight, "
        "bool input_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ldtune, Autograd, m) { m.impl("batch_norm_train", &batch_norm_train_autograd); }

TORCH_LIBRARY_IMPL(ldtune, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_cpu);
  m.impl("batch_norm_train_forward", &forward_op);
  m.impl("batch_norm_train_backward", &backward_op);
  m.impl("batch_norm_eval", &batch_norm_eval_cpu);
}
