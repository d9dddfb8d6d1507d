#include "trainer/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "csrc/config/recipe_loader.h"
#include "csrc/model/sharding.h"
#include "csrc/model/transformer.h"
#include "csrc/moe/balancing.h"
#include "csrc/util/cuda_sync_debug.h"
#include "csrc/util/fault_injection.h"
#include "csrc/util/host_sync.h"
#include "csrc/util/run_position.h"
#include "parallel/agreement.h"
#include "parallel/alltoall_dispatcher.h"
#include "parallel/grad_sync.h"
#include "parallel/mesh.h"
#include "parallel/tensor_parallel.h"
#include "trainer/base_dtype.h"
#include "trainer/checkpoint.h"
#include "trainer/data_feed.h"
#include "trainer/evaluator.h"
#include "trainer/metrics.h"
#include "trainer/moe_measures.h"
#include "trainer/optimizer.h"
#include "trainer/preemption.h"
#include "trainer/progress_line.h"
#include "trainer/schedule.h"

namespace moetrain::trainer {
namespace fs = std::filesystem;
namespace {

std::string human_count(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof(buf), "%.2fB", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof(buf), "%.0f", v);
  return buf;
}

std::string human_duration(double seconds) {
  char buf[32];
  const auto s = static_cast<long long>(seconds);
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%lldh%02lldm", s / 3600, (s / 60) % 60);
  else std::snprintf(buf, sizeof(buf), "%lldm%02llds", s / 60, s % 60);
  return buf;
}

double now() {
  using namespace std::chrono;
  return duration_cast<duration<double>>(steady_clock::now().time_since_epoch()).count();
}

// Fine-tuning: LoRA freezes every base weight; freeze_router freezes router weights. Either way the
// expert biases stop updating. Returns whether the router is frozen.
bool apply_freezing(model::TransformerImpl& model, const config::FinetuneConfig& f) {
  const bool lora = f.lora().rank() > 0;
  if (!lora && !f.freeze_router()) return false;
  for (auto& p : model::roled_parameters(model)) {
    if ((lora && !p.role.adapter) || p.role.router) p.tensor.requires_grad_(false);
  }
  for (auto& layer : model.moe_layers()) layer->set_router_frozen(true);
  return true;
}

// finetune.init_from: a step directory (has manifest.json) or a run directory (its checkpoints/latest).
std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(fs::path(path) / "manifest.json")) return path;
  std::ifstream pointer(fs::path(path) / "checkpoints" / "latest");
  std::string name;
  if (pointer >> name) return (fs::path(path) / "checkpoints" / name).string();
  throw std::runtime_error("finetune.init_from = \"" + path +
                           "\" is neither a checkpoint (no manifest.json) nor a run directory with checkpoints/latest; "
                           "point it at RUN_DIR or RUN_DIR/checkpoints/step_N (moe-import writes one from a Hugging Face model)");
}

}  // namespace

struct Trainer::State {
  parallel::ProcessMesh* mesh = nullptr;
  Placement placement;
  bool writes_logs = true;  // rank 0
  int64_t dp = 1, dp_rank = 0;
  config::Recipe recipe;
  std::string run_dir;
  model::Transformer model{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::unique_ptr<TrainingData> train_data;
  EvalWindows eval_data;
  bool has_eval = false;
  std::unique_ptr<MetricsSink> metrics;
  std::unique_ptr<ExpertLoadLog> expert_log;
  std::unique_ptr<Checkpointer> checkpointer;
  std::shared_ptr<parallel::TensorParallel> tensor_parallel;  // tp > 1 only
  TrainState train_state;
  double unigram_ppl = NAN;
  bool router_frozen = false;
  std::vector<torch::Tensor> router_at_start;  // router weights, then expert biases, at the start of this invocation
};

Trainer::Trainer(const config::Recipe& recipe, const std::string& run_dir, parallel::ProcessMesh* mesh,
                 const Placement& placement)
    : s_(std::make_unique<State>()) {
  s_->placement = placement;
  s_->recipe = recipe;
  s_->run_dir = run_dir;
  s_->mesh = mesh;
  if (mesh) {
    s_->writes_logs = mesh->world().rank() == 0;
    s_->dp = mesh->sizes().dp();
    s_->dp_rank = mesh->dp_rank();
  }
  const auto& r = recipe;
  if (r.train().threads() > 0) torch::set_num_threads(static_cast<int>(r.train().threads()));
  set_deterministic(r.train().deterministic());
  torch::manual_seed(r.train().seed());  // the CPU's and every GPU's generator
  const torch::Device device = placement.device;

  s_->train_data = std::make_unique<TrainingData>(r.data().train_prefix(), r.data().seq_len(), r.train().seed(),
                                                  r.model().vocab_size());
  if (!r.data().valid_prefix().empty()) {
    s_->eval_data = load_eval_windows(r.data().valid_prefix(), r.data().seq_len(), r.train().eval_sequences(),
                                      r.model().vocab_size());
    s_->has_eval = true;
    s_->unigram_ppl = unigram_baseline(r.data().train_prefix(), s_->eval_data, r.model().vocab_size());
    for (auto& w : s_->eval_data.windows) w = w.to(device);
  }

  // The data is good: only now does the run directory come to exist (a rejected run leaves nothing).
  fs::create_directories(run_dir);
  if (s_->writes_logs) {
    std::ofstream(run_dir + "/recipe.textproto") << "# Resolved recipe: every field with its value for this run.\n"
                                                 << config::to_text(recipe);
  }

  const int64_t ep = mesh ? mesh->sizes().ep : 1, ep_rank = mesh ? mesh->ep_rank() : 0;
  const int64_t tp = mesh ? mesh->sizes().tp : 1, tp_rank = mesh ? mesh->tp_rank() : 0;
  s_->model = model::Transformer(model::TransformerOptions::from_recipe(r, ep, ep_rank, tp, tp_rank));
  s_->router_frozen = apply_freezing(*s_->model, r.finetune());
  // Before initialisation (the experts' fp32 storage is then never written) and before the move to the
  // device (it never holds an fp32 base). Initialisation rounds into the bf16 weights.
  if (r.finetune().base_dtype() == config::TrainConfig::BF16) {
    const BaseDtypeReport held = hold_frozen_base_in(*s_->model, torch::kBFloat16);
    if (s_->writes_logs) {
      std::printf("finetune.base_dtype BF16: %lld frozen base matrices in bf16; parameter bytes on this rank %lld (%lld with an fp32 base)\n",
                  static_cast<long long>(held.tensors), static_cast<long long>(held.bytes_after),
                  static_cast<long long>(held.bytes_before));
    }
  }
  model::init_weights(*s_->model, r.train().seed(), r.model().init_std());
  s_->model->to(device);
  if (tp > 1) {
    s_->tensor_parallel = std::make_shared<parallel::TensorParallel>(mesh->tp());
    s_->model->set_tensor_parallel(s_->tensor_parallel);
  }
  if (mesh) {
    for (auto& layer : s_->model->moe_layers()) {
      if (ep > 1) layer->set_dispatcher(std::make_shared<parallel::AllToAllDispatcher>(mesh->ep(), r.model().num_experts()));
      // Global-batch counts: every data-parallel rank's, and under TP every tp rank's share of the tokens.
      layer->set_count_reducer([mesh](const torch::Tensor& counts) {
        auto c = counts.contiguous().clone();
        if (mesh->sizes().tp > 1) parallel::sum_over_world(c, *mesh);
        else parallel::sum_over_dp(c, *mesh);
        return c;
      });
    }
  }
  s_->optimizer = make_optimizer(*s_->model, r.optimizer());
  s_->checkpointer = std::make_unique<Checkpointer>(run_dir, r.checkpoint().keep_last(), model_section_text(r),
                                                    config::to_text(recipe), mesh);
  bool resumed = false;
  if (r.checkpoint().resume()) {
    if (auto latest = s_->checkpointer->latest()) {
      s_->train_state = s_->checkpointer->load(*latest, *s_->model, s_->optimizer.get());
      resumed = true;
      if (s_->writes_logs) std::printf("resumed from %s (step %lld)\n", latest->c_str(), static_cast<long long>(s_->train_state.step));
    }
  }
  if (!resumed && !r.finetune().init_from().empty()) {
    // Weights (and expert biases) only: the optimizer, step and data position start fresh; adapters
    // keep their initialisation (a pretrained checkpoint has none).
    const std::string source = resolve_checkpoint(r.finetune().init_from());
    LoadOptions weights_only;
    weights_only.optimizer = weights_only.train_state = false;
    weights_only.adapters_may_be_missing = true;
    s_->checkpointer->load(source, *s_->model, nullptr, weights_only);
    if (s_->writes_logs) std::printf("initialised from %s (finetune.init_from)\n", source.c_str());
  }
  for (const auto& p : model::roled_parameters(*s_->model)) {
    if (p.role.router) s_->router_at_start.push_back(p.tensor.detach().clone());
  }
  for (const auto& b : s_->model->named_buffers()) s_->router_at_start.push_back(b.value().detach().clone());
  if (s_->writes_logs) {
    for (const char* log : {"metrics.jsonl", "expert_load.jsonl", "expert_domains.jsonl"}) {
      drop_lines_after_step(run_dir + "/" + log, s_->train_state.step);
    }
    s_->metrics = std::make_unique<MetricsSink>(run_dir, r.logging().tensorboard(), resumed ? s_->train_state.step : -1);
    s_->expert_log = std::make_unique<ExpertLoadLog>(run_dir);
  }
}

Trainer::~Trainer() = default;

TrainSummary Trainer::run() {
  const auto& r = s_->recipe;
  auto& model = *s_->model;
  auto& state = s_->train_state;
  const int64_t steps = r.train().steps(), mbs = r.train().micro_batch_size(), accum = r.train().grad_accum_steps();
  const int64_t seq = r.data().seq_len();
  const int64_t dp = s_->dp, dp_rank = s_->dp_rank;
  const int64_t tokens_per_step = mbs * accum * seq * dp;
  const double clip = r.optimizer().grad_clip() > 0 ? r.optimizer().grad_clip() : std::numeric_limits<double>::infinity();
  parallel::ProcessMesh* mesh = s_->mesh;
  const bool redraw = redraw_progress_line();  // one line redrawn in place, else whole lines
  const torch::Device device = s_->placement.device;

  // Counts of the whole model: the global size of every parameter (this process holds 1/ep of the
  // experts and 1/tp of the attention and dense-MLP weights).
  int64_t total_params = 0, expert_params = 0;
  for (const auto& p : model::roled_parameters(model)) {
    int64_t global = 1;
    for (const int64_t d : p.role.box.global_view) global *= d;
    total_params += global;
    if (p.role.expert) expert_params += global;
  }
  const double active = total_params - expert_params * (1.0 - static_cast<double>(r.model().top_k()) / r.model().num_experts());
  std::printf("model: %s parameters (%s active per token), %lld layers, %lld experts top-%lld\n",
              human_count(total_params).c_str(), human_count(active).c_str(),
              static_cast<long long>(r.model().num_layers()), static_cast<long long>(r.model().num_experts()),
              static_cast<long long>(r.model().top_k()));
  std::printf("data: %s training tokens, %lld tokens per step; run directory %s\n",
              human_count(s_->train_data->num_tokens()).c_str(), static_cast<long long>(tokens_per_step),
              s_->run_dir.c_str());
  int64_t trainable = 0, frozen = 0;  // this rank's shard
  for (const auto& p : model.parameters()) (p.requires_grad() ? trainable : frozen) += p.numel();
  if (frozen > 0) {
    std::printf("fine-tuning: %s trainable, %s frozen parameters on this rank%s\n", human_count(trainable).c_str(),
                human_count(frozen).c_str(), s_->router_frozen ? "; router and expert biases frozen" : "");
  }
  if (s_->has_eval) {
    int64_t eval_tokens = 0;
    for (const auto& w : s_->eval_data.windows) eval_tokens += w.size(0) * (w.size(1) - 1);
    std::printf("unigram baseline perplexity on validation: %.2f (the %s tokens val_ppl is measured on)\n", s_->unigram_ppl,
                human_count(static_cast<double>(eval_tokens)).c_str());
  }
  std::fflush(stdout);

  TrainSummary summary;
  summary.unigram_ppl = s_->unigram_ppl;
  if (state.step >= steps) {
    std::printf("run in %s already completed %lld of train.steps = %lld; raise train.steps to continue it\n",
                s_->run_dir.c_str(), static_cast<long long>(state.step), static_cast<long long>(steps));
  }
  summary.val_loss = summary.val_ppl = NAN;
  install_preemption_handlers();
  const double start = now();
  const int64_t first_step = state.step;
  auto moe_layers = model.moe_layers();
  std::vector<std::string> layer_names;  // "layer<i>" by transformer layer index
  for (size_t l = 0; l < model.options().is_moe.size(); ++l) {
    if (model.options().is_moe[l]) layer_names.push_back("layer" + std::to_string(l));
  }
  auto add_moe_measures = [&](StepRecord& rec, const std::vector<LayerStepMeasures>& m, int64_t micro_batches) {
    if (m.empty()) return;
    double vio = 0, dropped = 0, unchosen = 0, entropy = 0;
    std::vector<torch::Tensor> load;  // host
    for (size_t l = 0; l < m.size(); ++l) {
      const double v = moe::max_violation(m[l].host_load_E), d = m[l].dropped_fraction(), h = m[l].entropy;
      const double u = m[l].unchosen_fraction();
      rec.add("max_vio/" + layer_names[l], v);
      rec.add("dropped_frac/" + layer_names[l], d);
      rec.add("unchosen_frac/" + layer_names[l], u);
      rec.add("router_entropy/" + layer_names[l], h);
      rec.add("aux_loss/" + layer_names[l], m[l].aux / static_cast<double>(micro_batches));
      rec.add("z_loss/" + layer_names[l], m[l].z / static_cast<double>(micro_batches));
      vio += v, dropped += d, unchosen += u, entropy += h;
      // Tokens per expert (the step's global batch, before capacity) as TensorBoard scalars, one
      // chart per expert under tokens_per_expert/<layer>/; metrics.jsonl keeps its summary and
      // expert_load.jsonl the full vectors.
      const auto& counts = m[l].host_load_E;
      load.push_back(counts);
      for (int64_t e = 0; e < counts.numel(); ++e) {
        char tag[64];
        std::snprintf(tag, sizeof(tag), "tokens_per_expert/%s/expert%03lld", layer_names[l].c_str(), static_cast<long long>(e));
        rec.add_tensorboard_only(tag, static_cast<double>(counts.data_ptr<int64_t>()[e]));
      }
    }
    const double n = static_cast<double>(m.size());
    rec.add("max_vio", vio / n);
    rec.add("dropped_frac", dropped / n);
    rec.add("unchosen_frac", unchosen / n);
    rec.add("router_entropy", entropy / n);
    if (s_->expert_log) s_->expert_log->write_load(rec.step, layer_names, load);
  };
  auto evaluate_now = [&](StepRecord& rec) {
    EvalResult ev = evaluate(model, s_->eval_data, mbs);
    if (s_->tensor_parallel) {
      // Each tp rank routed its slice of every window's tokens: the validation load is their sum.
      for (auto& c : ev.expert_load) c = s_->tensor_parallel->sum_counts(c);
      for (auto& domain : ev.domain_expert_load)
        for (auto& c : domain) c = s_->tensor_parallel->sum_counts(c);
    }
    rec.add("val_loss", ev.loss);
    rec.add("val_ppl", ev.ppl);
    for (const auto& [domain, loss] : ev.domain_loss) rec.add("val_loss/" + domain, loss);
    for (const auto& [domain, loss] : ev.domain_loss) rec.add("val_ppl/" + domain, std::exp(loss));
    if (!ev.expert_load.empty()) {
      double vio = 0;
      for (size_t l = 0; l < ev.expert_load.size(); ++l) {
        const double v = moe::max_violation(ev.expert_load[l]);
        rec.add("val_max_vio/" + layer_names[l], v);
        vio += v;
      }
      rec.add("val_max_vio", vio / static_cast<double>(ev.expert_load.size()));
      if (s_->expert_log) s_->expert_log->write_domains(state.step, layer_names, s_->eval_data.domains, ev.domain_expert_load);
    }
    summary.val_loss = ev.loss, summary.val_ppl = ev.ppl;
    std::printf("%seval step %lld | val_loss %.4f | val_ppl %.2f |", redraw ? "\n" : "", static_cast<long long>(state.step), ev.loss, ev.ppl);
    for (const auto& [domain, loss] : ev.domain_loss) std::printf(" %s %.2f", domain.c_str(), std::exp(loss));
    std::printf("\n");
  };

  // MOETRAIN_CUDA_SYNC_DEBUG=error (launch/gpu-check.sh): steady-state steps on a GPU fail on any host
  // wait other than the counted reads; evaluation and checkpoints read on purpose (paused below).
  util::SteadyStateSyncDebug sync_debug(device.is_cuda() ? util::sync_debug_from_env() : util::SyncDebugSettings{});
  while (state.step < steps) {
    sync_debug.step_begins(state.step - first_step);
    util::set_run_step(state.step + 1, "training");
    const double t0 = now();
    const double lr = learning_rate(r, state.step);
    for (auto& group : s_->optimizer->param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);

    double aux_sum = 0, z_sum = 0;
    torch::Tensor lm_sum_t = torch::zeros({}, torch::TensorOptions(device).dtype(torch::kFloat64));  // Σ micro-batch LM losses
    for (int64_t micro = 0; micro < accum; ++micro) {
      // Data-parallel rank r reads micro-batch m at global positions base + (m·dp + r)·mbs: the same
      // sequences, in the same routing groups, as one process with dp× the accumulation steps.
      auto batch = s_->train_data->batch(state.samples_consumed + (micro * dp + dp_rank) * mbs, mbs)  // (mbs, seq + 1)
                       .to(device, /*non_blocking=*/device.is_cuda());
      model.set_first_sample(state.samples_consumed + (micro * dp + dp_rank) * mbs);  // router noise keyed by global token
      auto out = model.forward(batch.narrow(1, 0, seq));
      auto lm = model.token_losses(out.logits, batch.narrow(1, 1, seq)).mean();
      auto loss = (lm + out.aux_loss + out.z_loss) / static_cast<double>(accum);
      loss.backward();
      lm_sum_t += lm.detach().to(torch::kFloat64);
    }
    state.samples_consumed += mbs * accum * dp;
    // Every trainable parameter has a gradient, zero where the step did not use it (a router under RANDOM
    // routing): AdamW then decays it alike in one process and in every layout's gradient buckets.
    for (auto& p : model.parameters()) {
      if (p.requires_grad() && !p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    }
    if (mesh) parallel::sync_gradients(model, *mesh);
    const torch::Tensor grad_norm_t = mesh ? parallel::global_grad_norm(model, *mesh) : local_grad_norm(model);
    clip_gradients(model, clip, grad_norm_t);
    util::inject_fault(util::FaultPoint::kOptimizerStep);
    s_->optimizer->step();
    s_->optimizer->zero_grad();
    // The step's routing measures and global-batch load, summed over the world, in one host read.
    const auto moe_step = read_step_measures(moe_layers, mesh);
    for (size_t l = 0; l < moe_layers.size(); ++l) {
      moe_layers[l]->end_step(moe_step[l].load_E);  // aux-loss-free bias update from the step's global-batch load
      aux_sum += moe_step[l].aux, z_sum += moe_step[l].z;  // all layers' terms, as the loss carries them
    }
    // lm loss is replicated over tp: mean over the world = mean over dp. One host read for both scalars.
    if (mesh && mesh->sizes().world > 1) parallel::sum_over_world(lm_sum_t, *mesh);
    const auto step_scalars = util::read_to_host(torch::stack({lm_sum_t, grad_norm_t}), "step loss and gradient norm");
    const double lm_sum = step_scalars.data_ptr<double>()[0] / (mesh ? mesh->sizes().world : 1);
    const double grad_norm = step_scalars.data_ptr<double>()[1];
    state.step += 1;
    state.tokens += tokens_per_step;

    const double dt = now() - t0;
    StepRecord rec;
    rec.step = state.step;
    rec.add("loss", (lm_sum + aux_sum + z_sum) / accum);
    rec.add("lm_loss", lm_sum / accum);
    rec.add("aux_loss", aux_sum / accum);  // Σ over MoE layers of all balancing terms, as added to the loss
    rec.add("z_loss", z_sum / accum);      // Σ over MoE layers of the z-losses, as added to the loss
    add_moe_measures(rec, moe_step, accum);
    rec.add("lr", lr);
    rec.add("grad_norm", grad_norm);
    rec.add("tokens", static_cast<double>(state.tokens));
    rec.add("tokens_per_s", tokens_per_step / dt);
    summary.final_loss = rec.get("loss");

    const double elapsed = now() - start;
    const double eta = elapsed / (state.step - first_step) * (steps - state.step);
    const bool log_line = state.step % r.logging().log_interval() == 0 || state.step == steps || state.step == first_step + 1;
    if (log_line || redraw) {
      std::printf("%sstep %lld/%lld | loss %.4f | lm %.4f | aux %.4f | maxvio %.2f | lr %.2e | gnorm %.3f | %s tok/s | ETA %s%s",
                  redraw ? "\r" : "", static_cast<long long>(state.step), static_cast<long long>(steps), rec.get("loss"),
                  rec.get("lm_loss"), rec.get("aux_loss"), moe_layers.empty() ? 0.0 : rec.get("max_vio"), lr, grad_norm,
                  human_count(tokens_per_step / dt).c_str(), human_duration(eta).c_str(), (log_line || !redraw) ? "\n" : "");
      std::fflush(stdout);
    }

    const int64_t eval_every = r.train().eval_interval();
    if (s_->has_eval && ((eval_every > 0 && state.step % eval_every == 0) || state.step == steps)) {
      util::SyncDebugPause pause;
      util::set_run_step(state.step, "evaluation");
      evaluate_now(rec);
    }
    if (s_->metrics) s_->metrics->write(rec);

    // Preemption: a signal on any rank stops every rank at this step boundary, after a checkpoint.
    bool preempted = preemption_requested();
    if (mesh && mesh->sizes().world > 1) preempted = parallel::any_rank(mesh->world(), preempted);
    const int64_t ckpt_every = r.checkpoint().interval(), exit_every = r.train().exit_interval();
    const bool exiting = exit_every > 0 && state.step % exit_every == 0 && state.step < steps;
    std::string saved;
    if ((ckpt_every > 0 && state.step % ckpt_every == 0) || (state.step == steps && r.checkpoint().save_final()) ||
        exiting || (preempted && state.step < steps)) {
      util::SyncDebugPause pause;
      util::set_run_step(state.step, "checkpoint");
      saved = s_->checkpointer->save(state, model, *s_->optimizer);
    }
    if (preempted && state.step < steps) {
      std::printf("%spreemption signal received: stopped at step %lld, checkpoint saved in %s; run the same command to resume\n",
                  redraw ? "\n" : "", static_cast<long long>(state.step), saved.c_str());
      std::fflush(stdout);
      summary.preempted = true;
      break;
    }
    if (exiting) {
      std::printf("exit_interval reached at step %lld: checkpoint saved; run again to continue\n",
                  static_cast<long long>(state.step));
      break;
    }
  }
  summary.steps = state.step;
  util::set_run_step(state.step, "finish");
  if (s_->router_frozen) {
    util::SyncDebugPause pause;
    // The fine-tuning report: did the routing move? (It must not: no gradients, no bias updates.)
    double moved = 0;
    size_t i = 0;
    for (const auto& p : model::roled_parameters(model)) {
      if (p.role.router) moved = std::max(moved, (p.tensor - s_->router_at_start[i++]).abs().max().item<double>());
    }
    for (const auto& b : model.named_buffers()) moved = std::max(moved, (b.value() - s_->router_at_start[i++]).abs().max().item<double>());
    summary.router_max_change = moved;
    if (s_->writes_logs) {
      std::printf("router frozen: router weights and expert biases moved by at most %g during this run\n", moved);
      std::ofstream(s_->run_dir + "/finetune_report.json")
          << "{\"router_frozen\": true, \"router_max_abs_change\": " << moved << ", \"trainable_parameters\": " << trainable
          << ", \"frozen_parameters\": " << frozen << ", \"lora_rank\": " << r.finetune().lora().rank() << "}\n";
    }
  }
  return summary;
}

}  // namespace moetrain::trainer
