#include "trainer/step_report.h"

#include <cmath>
#include <cstdio>

#include "csrc/moe/balancing.h"

namespace moetrain::trainer {

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

StepReporter::StepReporter(std::vector<std::string> layer_names, bool writes_logs, const std::string& run_dir,
                           bool tensorboard, int64_t resumed_step, bool redraw)
    : layer_names_(std::move(layer_names)), redraw_(redraw) {
  if (!writes_logs) return;
  metrics_ = std::make_unique<MetricsSink>(run_dir, tensorboard, resumed_step);
  expert_log_ = std::make_unique<ExpertLoadLog>(run_dir);
}

StepRecord StepReporter::record(const StepOutcome& o) {
  double aux_sum = 0, z_sum = 0;  // all layers' terms, as the loss carries them
  for (const auto& layer : o.moe) aux_sum += layer.aux, z_sum += layer.z;
  const double accum = static_cast<double>(o.micro_batches);
  StepRecord rec;
  rec.step = o.step;
  rec.add("loss", (o.lm_sum + aux_sum + z_sum) / accum);
  rec.add("lm_loss", o.lm_sum / accum);
  rec.add("aux_loss", aux_sum / accum);  // Σ over MoE layers of all balancing terms, as added to the loss
  rec.add("z_loss", z_sum / accum);      // Σ over MoE layers of the z-losses, as added to the loss
  add_moe_measures(rec, o.moe, o.micro_batches);
  rec.add("lr", o.lr);
  rec.add("grad_norm", o.grad_norm);
  rec.add("tokens", static_cast<double>(o.tokens));
  rec.add("tokens_per_s", o.tokens_per_step / o.seconds);
  rec.add("host_reads", static_cast<double>(o.host_reads));
  if (o.mem_peak >= 0) {  // this rank's tensor memory (util::memory_stats), MiB
    rec.add("mem_allocated_mib", static_cast<double>(o.mem_allocated) / (1 << 20));
    rec.add("mem_peak_mib", static_cast<double>(o.mem_peak) / (1 << 20));
  }
  add_communication(rec, o.comm);
  if (o.grad_buckets >= 0) {  // how much of the gradient reduction could overlap the backward
    rec.add("grad_buckets", static_cast<double>(o.grad_buckets));
    rec.add("grad_buckets_in_backward", static_cast<double>(o.grad_buckets_in_backward));
    rec.add("grad_bucket_copies", static_cast<double>(o.grad_bucket_copies));
  }
  return rec;
}

// Rank 0's seconds in collectives this step: "comm_s" the host spent waiting in all, "comm_s/GROUP/OP" each
// (an asynchronous one's time in flight, and its wait as ".../OP/wait"), and the bytes they carried
// (parallel/comm_clock.h says what the seconds hold). Nothing for one process.
void StepReporter::add_communication(StepRecord& rec, const std::vector<parallel::CommTally>& comm) {
  if (comm.empty()) return;
  double seconds = 0, bytes = 0, waits = 0;
  for (const auto& t : comm) {
    if (!t.overlapped) seconds += t.seconds;  // the host's waits; an async collective's flight overlaps them
    bytes += static_cast<double>(t.bytes);
    waits += static_cast<double>(t.host_waits);
  }
  rec.add("comm_s", seconds);
  rec.add("comm_bytes", bytes);
  rec.add("comm_host_waits", waits);  // collectives that held the host until the peers' data came
  for (const auto& t : comm) rec.add("comm_s/" + t.group + "/" + t.op, t.seconds);
}

void StepReporter::add_moe_measures(StepRecord& rec, const std::vector<LayerStepMeasures>& m,
                                    int64_t micro_batches) {
  if (m.empty()) return;
  double vio = 0, dropped = 0, unchosen = 0, entropy = 0;
  std::vector<torch::Tensor> load;  // host
  for (size_t l = 0; l < m.size(); ++l) {
    const std::string& layer = layer_names_[l];
    const double v = moe::max_violation(m[l].host_load_E), d = m[l].dropped_fraction(), h = m[l].entropy;
    const double u = m[l].unchosen_fraction();
    rec.add("max_vio/" + layer, v);
    rec.add("dropped_frac/" + layer, d);
    rec.add("unchosen_frac/" + layer, u);
    rec.add("router_entropy/" + layer, h);
    rec.add("aux_loss/" + layer, m[l].aux / static_cast<double>(micro_batches));
    rec.add("z_loss/" + layer, m[l].z / static_cast<double>(micro_batches));
    vio += v, dropped += d, unchosen += u, entropy += h;
    // Tokens per expert (the step's global batch, before capacity) as TensorBoard scalars, one chart per
    // expert under tokens_per_expert/<layer>/; metrics.jsonl keeps its summary and expert_load.jsonl the
    // full vectors.
    const auto& counts = m[l].host_load_E;
    load.push_back(counts);
    for (int64_t e = 0; e < counts.numel(); ++e) {
      char tag[64];
      std::snprintf(tag, sizeof(tag), "tokens_per_expert/%s/expert%03lld", layer.c_str(),
                    static_cast<long long>(e));
      rec.add_tensorboard_only(tag, static_cast<double>(counts.data_ptr<int64_t>()[e]));
    }
  }
  const double n = static_cast<double>(m.size());
  rec.add("max_vio", vio / n);
  rec.add("dropped_frac", dropped / n);
  rec.add("unchosen_frac", unchosen / n);
  rec.add("router_entropy", entropy / n);
  if (expert_log_) expert_log_->write_load(rec.step, layer_names_, load);
}

void StepReporter::print_progress(const StepRecord& rec, const StepOutcome& o, int64_t steps, double eta_s,
                                  bool whole_line) const {
  if (!whole_line && !redraw_) return;
  std::printf(
      "%sstep %lld/%lld | loss %.4f | lm %.4f | aux %.4f | maxvio %.2f | lr %.2e | gnorm %.3f | %s tok/s | ETA %s%s",
      redraw_ ? "\r" : "", static_cast<long long>(o.step), static_cast<long long>(steps), rec.get("loss"),
      rec.get("lm_loss"), rec.get("aux_loss"), o.moe.empty() ? 0.0 : rec.get("max_vio"), o.lr, o.grad_norm,
      human_count(o.tokens_per_step / o.seconds).c_str(), human_duration(eta_s).c_str(),
      (whole_line || !redraw_) ? "\n" : "");
  std::fflush(stdout);
}

void StepReporter::add_evaluation(StepRecord& rec, const EvalResult& ev,
                                  const std::vector<std::string>& domains) {
  rec.add("val_loss", ev.loss);
  rec.add("val_ppl", ev.ppl);
  for (const auto& [domain, loss] : ev.domain_loss) rec.add("val_loss/" + domain, loss);
  for (const auto& [domain, loss] : ev.domain_loss) rec.add("val_ppl/" + domain, std::exp(loss));
  if (!ev.expert_load.empty()) {
    double vio = 0;
    for (size_t l = 0; l < ev.expert_load.size(); ++l) {
      const double v = moe::max_violation(ev.expert_load[l]);
      rec.add("val_max_vio/" + layer_names_[l], v);
      vio += v;
    }
    rec.add("val_max_vio", vio / static_cast<double>(ev.expert_load.size()));
    if (expert_log_) expert_log_->write_domains(rec.step, layer_names_, domains, ev.domain_expert_load);
  }
  std::printf("%seval step %lld | val_loss %.4f | val_ppl %.2f |", line_break(),
              static_cast<long long>(rec.step), ev.loss, ev.ppl);
  for (const auto& [domain, loss] : ev.domain_loss) std::printf(" %s %.2f", domain.c_str(), std::exp(loss));
  std::printf("\n");
}

void StepReporter::write(const StepRecord& rec) {
  if (metrics_) metrics_->write(rec);
}

}  // namespace moetrain::trainer
