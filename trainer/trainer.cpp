#include "trainer/trainer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "csrc/config/recipe_loader.h"
#include "csrc/model/sharding.h"
#include "csrc/model/transformer.h"
#include "csrc/util/cuda_sync_debug.h"
#include "csrc/util/run_position.h"
#include "parallel/agreement.h"
#include "parallel/mesh.h"
#include "parallel/model_parallel.h"
#include "trainer/base_dtype.h"
#include "trainer/cadence.h"
#include "trainer/checkpoint.h"
#include "trainer/data_feed.h"
#include "trainer/evaluator.h"
#include "trainer/metrics.h"
#include "parallel/distributed_optimizer.h"
#include "trainer/optimizer.h"
#include "trainer/preemption.h"
#include "trainer/progress_line.h"
#include "trainer/step_report.h"
#include "trainer/train_step.h"

namespace moetrain::trainer {
namespace fs = std::filesystem;
namespace {

// Parameters of this rank's shard that train and that are frozen.
std::pair<int64_t, int64_t> trainable_and_frozen(const model::TransformerImpl& model) {
  int64_t trainable = 0, frozen = 0;
  for (const auto& p : model.parameters()) (p.requires_grad() ? trainable : frozen) += p.numel();
  return {trainable, frozen};
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
  throw std::runtime_error(
      "finetune.init_from = \"" + path +
      "\" is neither a checkpoint (no manifest.json) nor a run directory with checkpoints/latest; "
      "point it at RUN_DIR or RUN_DIR/checkpoints/step_N (moe-import writes one from a Hugging Face model)");
}

}  // namespace

struct Trainer::State {
  parallel::ProcessMesh* mesh = nullptr;
  Placement placement;
  bool writes_logs = true;  // rank 0
  config::Recipe recipe;
  std::string run_dir;
  model::Transformer model{nullptr};
  parallel::ModelParallelism parallelism;  // tensor parallelism and the MoE layers' context
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::unique_ptr<parallel::DistributedOptimizer> distributed;  // optimizer.distributed with a mesh
  std::unique_ptr<TrainingData> train_data;
  EvalWindows eval_data;
  bool has_eval = false;
  std::unique_ptr<StepReporter> reporter;
  std::unique_ptr<Checkpointer> checkpointer;
  TrainState train_state;
  bool resumed = false;
  double unigram_ppl = NAN;
  bool router_frozen = false;
  std::vector<torch::Tensor> router_at_start;  // router weights, then expert biases, at the start of this invocation

  void load_data();
  void build_model();
  void restore();
  void open_logs();
  void print_run_header() const;
  void evaluate_into(StepRecord& record, TrainSummary& summary);
  bool checkpoint_or_stop(const Cadence& cadence, TrainSummary& summary);
  double frozen_router_report() const;
};

Trainer::Trainer(const config::Recipe& recipe, const std::string& run_dir, parallel::ProcessMesh* mesh,
                 const Placement& placement)
    : s_(std::make_unique<State>()) {
  s_->placement = placement;
  s_->recipe = recipe;
  s_->run_dir = run_dir;
  s_->mesh = mesh;
  s_->writes_logs = !mesh || mesh->world().rank() == 0;
  const auto& t = recipe.train();
  if (t.threads() > 0) torch::set_num_threads(static_cast<int>(t.threads()));
  set_deterministic(t.deterministic());
  torch::manual_seed(t.seed());  // the CPU's and every GPU's generator
  s_->load_data();
  // The data is good: only now does the run directory come to exist (a rejected run leaves nothing).
  fs::create_directories(run_dir);
  if (s_->writes_logs) {
    std::ofstream(run_dir + "/recipe.textproto")
        << "# Resolved recipe: every field with its value for this run.\n"
        << config::to_text(recipe);
  }
  s_->build_model();
  s_->restore();
  s_->open_logs();
}

Trainer::~Trainer() = default;

void Trainer::State::load_data() {
  const auto& r = recipe;
  train_data = std::make_unique<TrainingData>(r.data().train_prefix(), r.data().seq_len(), r.train().seed(),
                                              r.model().vocab_size());
  if (r.data().valid_prefix().empty()) return;
  eval_data = load_eval_windows(r.data().valid_prefix(), r.data().seq_len(), r.train().eval_sequences(),
                                r.model().vocab_size());
  has_eval = true;
  unigram_ppl = unigram_baseline(r.data().train_prefix(), eval_data, r.model().vocab_size());
  for (auto& w : eval_data.windows) w = w.to(placement.device);
}

// The model on its device with this rank's shards, frozen parts, parallelism and optimizer. It is
// initialised on the CPU, the same in every layout, then moved.
void Trainer::State::build_model() {
  const auto& r = recipe;
  model = model::Transformer(
      model::TransformerOptions::from_recipe(r, mesh ? mesh->placement() : model::ModelPlacement{}));
  router_frozen = apply_freezing(*model, r.finetune());
  // Before initialisation (the experts' fp32 storage is then never written) and before the move to the
  // device (it never holds an fp32 base). Initialisation rounds into the bf16 weights.
  if (r.finetune().base_dtype() == config::TrainConfig::BF16) {
    const BaseDtypeReport held = hold_frozen_base_in(*model, torch::kBFloat16);
    if (writes_logs) {
      std::printf(
          "finetune.base_dtype BF16: %lld frozen base matrices in bf16; parameter bytes on this rank %lld (%lld with an fp32 base)\n",
          static_cast<long long>(held.tensors), static_cast<long long>(held.bytes_after),
          static_cast<long long>(held.bytes_before));
    }
  }
  model::init_weights(*model, r.train().seed(), r.model().init_std());
  model->to(placement.device);
  parallelism = parallel::parallelize(*model, mesh);
  optimizer = make_optimizer(*model, r.optimizer());
  if (mesh && r.optimizer().distributed())
    distributed = std::make_unique<parallel::DistributedOptimizer>(*model, *mesh, r.optimizer());
  if (r.optimizer().param_dtype() == config::TrainConfig::BF16) {
    if (!distributed) {
      throw std::invalid_argument(
          "optimizer.param_dtype = BF16: needs the distributed optimizer, which shards over several processes; "
          "launch with mpirun or torchrun, or set optimizer.param_dtype: FP32");
    }
    // The matrices the matmuls take (the same set a bf16 frozen base holds: not the embedding, router,
    // norms or adapters).
    distributed->hold_params_in_bf16(
        [this](const std::string& name, const torch::Tensor& p) { return held_in_base_dtype(*model, name, p); },
        r.optimizer().grad_dtype() == config::TrainConfig::BF16);
  }
}

// Resumes from checkpoints/latest, or starts from finetune.init_from's weights, or from the initialisation.
void Trainer::State::restore() {
  const auto& r = recipe;
  checkpointer = std::make_unique<Checkpointer>(run_dir, r.checkpoint().keep_last(), model_section_text(r),
                                                config::to_text(r), mesh);
  checkpointer->set_distributed_optimizer(distributed.get());
  if (r.checkpoint().resume()) {
    if (auto latest = checkpointer->latest()) {
      train_state = checkpointer->load(*latest, *model, optimizer.get());
      resumed = true;
      if (writes_logs)
        std::printf("resumed from %s (step %lld)\n", latest->c_str(), static_cast<long long>(train_state.step));
    }
  }
  if (!resumed && !r.finetune().init_from().empty()) {
    // Weights (and expert biases) only: the optimizer, step and data position start fresh; adapters
    // keep their initialisation (a pretrained checkpoint has none).
    const std::string source = resolve_checkpoint(r.finetune().init_from());
    LoadOptions weights_only;
    weights_only.optimizer = weights_only.train_state = false;
    weights_only.adapters_may_be_missing = true;
    checkpointer->load(source, *model, nullptr, weights_only);
    if (writes_logs) std::printf("initialised from %s (finetune.init_from)\n", source.c_str());
  }
  for (const auto& p : model::roled_parameters(*model)) {
    if (p.role.router) router_at_start.push_back(p.tensor.detach().clone());
  }
  for (const auto& b : model->named_buffers()) router_at_start.push_back(b.value().detach().clone());
}

void Trainer::State::open_logs() {
  if (writes_logs) {
    for (const char* log : {"metrics.jsonl", "expert_load.jsonl", "expert_domains.jsonl"}) {
      drop_lines_after_step(run_dir + "/" + log, train_state.step);
    }
  }
  std::vector<std::string> layer_names;  // "layer<i>" by transformer layer index
  for (size_t l = 0; l < model->options().is_moe.size(); ++l) {
    if (model->options().is_moe[l]) layer_names.push_back("layer" + std::to_string(l));
  }
  reporter = std::make_unique<StepReporter>(std::move(layer_names), writes_logs, run_dir,
                                            recipe.logging().tensorboard(), resumed ? train_state.step : -1,
                                            redraw_progress_line());
}

TrainSummary Trainer::run() {
  auto& state = s_->train_state;
  const Cadence cadence = Cadence::from_recipe(s_->recipe);
  s_->print_run_header();
  TrainSummary summary;
  summary.unigram_ppl = s_->unigram_ppl;
  summary.val_loss = summary.val_ppl = NAN;
  if (state.step >= cadence.steps) {
    std::printf("run in %s already completed %lld of train.steps = %lld; raise train.steps to continue it\n",
                s_->run_dir.c_str(), static_cast<long long>(state.step), static_cast<long long>(cadence.steps));
  }
  install_preemption_handlers();
  TrainStep train_step(s_->recipe, {*s_->model, *s_->optimizer, *s_->train_data, s_->mesh,
                                    *s_->parallelism.moe, s_->placement.device, s_->distributed.get()});
  StepReporter& reporter = *s_->reporter;
  const double start = monotonic_seconds();
  const int64_t first_step = state.step;
  // MOETRAIN_CUDA_SYNC_DEBUG=error (launch/gpu-check.sh): steady-state steps on a GPU fail on any host
  // wait other than the counted reads; evaluation and checkpoints read on purpose (they pause it).
  util::SteadyStateSyncDebug sync_debug(s_->placement.device.is_cuda() ? util::sync_debug_from_env()
                                                                       : util::SyncDebugSettings{});
  while (state.step < cadence.steps) {
    sync_debug.step_begins(state.step - first_step);
    util::set_run_step(state.step + 1, "training");
    const StepOutcome outcome = train_step.run(state);
    StepRecord record = reporter.record(outcome);
    summary.final_loss = record.get("loss");
    const double eta = (monotonic_seconds() - start) / (state.step - first_step) * (cadence.steps - state.step);
    reporter.print_progress(record, outcome, cadence.steps, eta, cadence.should_log(state.step, first_step));
    if (s_->has_eval && cadence.should_evaluate(state.step)) s_->evaluate_into(record, summary);
    reporter.write(record);
    if (s_->checkpoint_or_stop(cadence, summary)) break;
  }
  summary.steps = state.step;
  util::set_run_step(state.step, "finish");
  if (s_->router_frozen) summary.router_max_change = s_->frozen_router_report();
  return summary;
}

// The model's size, the data and the baseline, once at the start of run().
void Trainer::State::print_run_header() const {
  const auto& m = recipe.model();
  const int64_t tokens_per_step = recipe.train().micro_batch_size() * recipe.train().grad_accum_steps() *
                                  recipe.data().seq_len() * (mesh ? mesh->sizes().dp() : 1);
  // Counts of the whole model: the global size of every parameter (this process holds 1/ep of the
  // experts and 1/tp of the attention and dense-MLP weights).
  int64_t total_params = 0, expert_params = 0;
  for (const auto& p : model::roled_parameters(*model)) {
    int64_t global = 1;
    for (const int64_t d : p.role.box.global_view) global *= d;
    total_params += global;
    if (p.role.expert) expert_params += global;
  }
  const double active = total_params - expert_params * (1.0 - static_cast<double>(m.top_k()) / m.num_experts());
  std::printf("model: %s parameters (%s active per token), %lld layers, %lld experts top-%lld\n",
              human_count(total_params).c_str(), human_count(active).c_str(),
              static_cast<long long>(m.num_layers()), static_cast<long long>(m.num_experts()),
              static_cast<long long>(m.top_k()));
  std::printf("data: %s training tokens, %lld tokens per step; run directory %s\n",
              human_count(train_data->num_tokens()).c_str(), static_cast<long long>(tokens_per_step),
              run_dir.c_str());
  const auto [trainable, frozen] = trainable_and_frozen(*model);
  if (frozen > 0) {
    std::printf("fine-tuning: %s trainable, %s frozen parameters on this rank%s\n",
                human_count(trainable).c_str(), human_count(frozen).c_str(),
                router_frozen ? "; router and expert biases frozen" : "");
  }
  if (has_eval) {
    int64_t eval_tokens = 0;
    for (const auto& w : eval_data.windows) eval_tokens += w.size(0) * (w.size(1) - 1);
    std::printf("unigram baseline perplexity on validation: %.2f (the %s tokens val_ppl is measured on)\n",
                unigram_ppl, human_count(static_cast<double>(eval_tokens)).c_str());
  }
  std::fflush(stdout);
}

void Trainer::State::evaluate_into(StepRecord& record, TrainSummary& summary) {
  util::SyncDebugPause pause;
  util::set_run_step(train_state.step, "evaluation");
  EvalResult ev = evaluate(*model, eval_data, recipe.train().micro_batch_size());
  // Under sequence-parallel MoE each tp rank routed its share of every window's tokens: the validation
  // load is their sum.
  const auto& moe = *parallelism.moe;
  if (moe.micro_batch_ranks() > 1) {
    for (auto& c : ev.expert_load) c = moe.sum_over_micro_batch(c);
    for (auto& domain : ev.domain_expert_load)
      for (auto& c : domain) c = moe.sum_over_micro_batch(c);
  }
  reporter->add_evaluation(record, ev, eval_data.domains);
  summary.val_loss = ev.loss, summary.val_ppl = ev.ppl;
}

// After a step's logs: the checkpoint the cadence asks for, and whether the process stops here (a
// preemption signal on any rank, or train.exit_interval). Every rank decides alike.
bool Trainer::State::checkpoint_or_stop(const Cadence& cadence, TrainSummary& summary) {
  const int64_t step = train_state.step;
  bool preempted = preemption_requested();
  if (mesh && mesh->sizes().world > 1) preempted = parallel::any_rank(mesh->world(), preempted);
  std::string saved;
  if (cadence.should_save(step, preempted)) {
    util::SyncDebugPause pause;
    util::set_run_step(step, "checkpoint");
    saved = checkpointer->save(train_state, *model, *optimizer);
  }
  if (cadence.stops_for_preemption(step, preempted)) {
    std::printf(
        "%spreemption signal received: stopped at step %lld, checkpoint saved in %s; run the same command to resume\n",
        reporter->line_break(), static_cast<long long>(step), saved.c_str());
    std::fflush(stdout);
    summary.preempted = true;
    return true;
  }
  if (cadence.should_exit(step)) {
    std::printf("exit_interval reached at step %lld: checkpoint saved; run again to continue\n",
                static_cast<long long>(step));
    return true;
  }
  return false;
}

// The fine-tuning report: did the routing move? (It must not: no gradients, no bias updates.) Returns the
// largest change of a router weight or expert bias during this invocation.
double Trainer::State::frozen_router_report() const {
  util::SyncDebugPause pause;
  double moved = 0;
  size_t i = 0;
  for (const auto& p : model::roled_parameters(*model)) {
    if (p.role.router) moved = std::max(moved, (p.tensor - router_at_start[i++]).abs().max().item<double>());
  }
  for (const auto& b : model->named_buffers())
    moved = std::max(moved, (b.value() - router_at_start[i++]).abs().max().item<double>());
  if (!writes_logs) return moved;
  const auto [trainable, frozen] = trainable_and_frozen(*model);
  std::printf("router frozen: router weights and expert biases moved by at most %g during this run\n", moved);
  std::ofstream(run_dir + "/finetune_report.json")
      << "{\"router_frozen\": true, \"router_max_abs_change\": " << moved
      << ", \"trainable_parameters\": " << trainable << ", \"frozen_parameters\": " << frozen
      << ", \"lora_rank\": " << recipe.finetune().lora().rank() << "}\n";
  return moved;
}

}  // namespace moetrain::trainer
