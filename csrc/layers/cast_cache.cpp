#include "csrc/layers/cast_cache.h"

#include <algorithm>

namespace moetrain::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Forward: the cached cast (a new tensor object over its storage, so each use gets its own grad_fn);
// backward: the gradient in the weight's dtype, as ToCopyBackward gives it.
struct CachedCast : torch::autograd::Function<CachedCast> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& w, const torch::Tensor& cast) {
    ctx->saved_data["dtype"] = static_cast<int64_t>(w.scalar_type());
    return cast.detach();
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {g[0].to(dtype), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CastCache::get(const torch::Tensor& w, torch::ScalarType dtype) {
  if (!w.defined() || w.scalar_type() == dtype) return w;
  const auto version = static_cast<uint32_t>(w._version());
  // Weights that no one else holds any more (a module's parameter replaced) leave the cache.
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                [](const Entry& e) { return e.weight.use_count() == 1; }),
                 entries_.end());
  Entry* entry = nullptr;
  for (auto& e : entries_) {
    if (e.weight.is_same(w) && e.dtype == dtype) entry = &e;
  }
  if (!entry) {
    entries_.push_back({w, version, dtype, torch::Tensor()});
    entry = &entries_.back();
  }
  if (!entry->cast.defined() || entry->version != version) {
    torch::NoGradGuard no_grad;
    entry->cast = w.to(dtype);
    entry->version = version;
    ++casts_;
  }
  if (!w.requires_grad() || !torch::GradMode::is_enabled()) return entry->cast.detach();
  return CachedCast::apply(w, entry->cast);
}

}  // namespace moetrain::layers
