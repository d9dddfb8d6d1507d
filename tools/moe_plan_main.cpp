// moe-plan --recipe R --gpus N --gpu-mem 80GiB [--nodes K] [--set field=value ...] [--imbalance X]
//          [--json FILE] [--all]
// Will this MoE fit on N GPUs, and how? For every layout moetrain can run the recipe in (tensor, expert and
// data parallelism, replicated or distributed optimizer, recomputation), the memory per rank (parameters,
// gradients, optimizer state, activations with the dispatch buffers, transient) and the bytes each step
// moves over each group, with the link the group crosses. Every term: docs/planning.md.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "csrc/config/recipe_loader.h"
#include "plan/memory_plan.h"
#include "tools/cli.h"

namespace {

namespace cli = moetrain::tools::cli;
namespace plan = moetrain::plan;

// "80GiB", "80GB" (10^9), "141G" (GiB), or bytes.
double parse_memory(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = text.substr(used);
  const double scale = unit == "GiB" || unit == "G"   ? std::pow(2.0, 30)
                       : unit == "GB"                 ? 1e9
                       : unit == "MiB" || unit == "M" ? std::pow(2.0, 20)
                       : unit.empty()                 ? 1.0
                                                      : -1.0;
  if (used == 0 || scale < 0 || value <= 0)
    throw cli::UsageError("--gpu-mem " + text + ": expected a size such as 80GiB, 141GiB, 80GB or 24G");
  return value * scale;
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", bytes / std::pow(2.0, 30));
  return buf;
}

nlohmann::json to_json(const plan::Estimate& e) {
  const auto& m = e.memory;
  const auto& t = e.traffic;
  return {{"tp", e.layout.tp},
          {"ep", e.layout.ep},
          {"expert_tensor", e.layout.etp},
          {"dp", e.layout.dp},
          {"distributed_optimizer", e.layout.distributed},
          {"bf16_params", e.layout.bf16_params},
          {"recompute", e.layout.recompute_text()},
          {"fits", e.fits},
          {"memory_bytes",
           {{"parameters", m.parameters},
            {"gradients", m.gradients},
            {"optimizer", m.optimizer},
            {"weight_casts", m.weight_casts},
            {"activations", m.activations},
            {"transient", m.transient},
            {"held", m.held()},
            {"peak", m.peak()}}},
          {"bytes_per_step",
           {{"tp", t.tp},
            {"ep", t.ep},
            {"expert_tp", t.etp},
            {"dp", t.dp},
            {"tp_inter_node", t.tp_inter},
            {"ep_inter_node", t.ep_inter},
            {"expert_tp_inter_node", t.etp_inter},
            {"dp_inter_node", t.dp_inter}}}};
}

// Cheaper layouts first: less recomputation, then the replicated optimizer, then fewer bytes across nodes.
int recompute_cost(const plan::Layout& l) {
  using moetrain::config::TrainConfig;
  if (l.recompute == TrainConfig::NONE) return 0;
  if (l.recompute == TrainConfig::FULL) return 3;
  return std::find(l.modules.begin(), l.modules.end(), "moe") != l.modules.end() ? 2 : 1;
}

double inter_node_bytes(const plan::Traffic& t) {
  return (t.tp_inter ? t.tp : 0) + (t.ep_inter ? t.ep : 0) + (t.etp_inter ? t.etp : 0) +
         (t.dp_inter ? t.dp : 0);
}

// --gpus, --nodes and --gpu-mem.
plan::Cluster cluster_of(const cli::Command& cmd) {
  plan::Cluster cluster;
  cluster.gpus = cmd.integer("--gpus", 1, 1);
  cluster.nodes = cmd.integer("--nodes", 1, 1);
  cluster.memory_bytes = parse_memory(cmd.get("--gpu-mem"));
  if (cluster.gpus % cluster.nodes != 0) {
    throw cli::UsageError("--nodes " + std::to_string(cluster.nodes) + ": does not divide --gpus " +
                          std::to_string(cluster.gpus) + "; give nodes with equal GPU counts");
  }
  return cluster;
}

// --imbalance.
plan::Options options_of(const cli::Command& cmd) {
  plan::Options options;
  if (const std::string text = cmd.get("--imbalance"); !text.empty()) {
    size_t used = 0;
    try {
      options.imbalance = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || !(options.imbalance >= 1.0))
      throw cli::UsageError("--imbalance " + text + ": expected a factor >= 1, such as 1.25 (1 = even load)");
  }
  return options;
}

// One layout's line of the table.
void print_row(const plan::Estimate& r) {
  const auto& m = r.memory;
  const auto& t = r.traffic;
  auto link = [](double bytes, bool inter) {
    return gib(bytes) + (bytes > 0 ? (inter ? " (inter)" : " (intra)") : "");
  };
  std::printf("| %lld | %lld | %lld | %lld | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
              static_cast<long long>(r.layout.tp), static_cast<long long>(r.layout.etp),
              static_cast<long long>(r.layout.ep), static_cast<long long>(r.layout.dp),
              r.layout.bf16_params   ? "distributed, bf16 params"
              : r.layout.distributed ? "distributed"
                                     : "replicated",
              r.layout.recompute_text().c_str(), gib(m.parameters).c_str(), gib(m.gradients).c_str(),
              gib(m.optimizer).c_str(), gib(m.activations).c_str(), gib(m.peak()).c_str(),
              r.fits ? "yes" : "no", link(t.tp, t.tp_inter).c_str(), link(t.etp, t.etp_inter).c_str(),
              link(t.ep, t.ep_inter).c_str(), link(t.dp, t.dp_inter).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  cli::Command cmd("moe-plan",
                   "usage: moe-plan --recipe R --gpus N --gpu-mem 80GiB [--nodes K] [--set field=value ...]\n"
                   "                [--imbalance X] [--json FILE] [--all]\n");
  cmd.required("--recipe", "FILE", "the recipe (text-format Recipe), as moe-train takes it")
      .required("--gpus", "N", "GPUs (ranks) in all")
      .required("--gpu-mem", "SIZE", "memory of one GPU: 80GiB, 141GiB, 80GB, 24G")
      .option("--nodes", "K", "nodes the GPUs are spread over, equally (default 1)")
      .repeated("--set", "FIELD=VALUE", "recipe override, as moe-train --set")
      .option("--imbalance", "X",
              "dropless routing: the busiest expert-parallel rank receives X times its even share of the\n"
              "routed tokens (default 1.25)")
      .option("--json", "FILE", "also write every layout's estimate as JSON")
      .toggle("--all", "list the layouts that do not fit too");
  return cmd.run(argc, argv, [&] {
    const auto recipe = moetrain::config::load_recipe(cmd.get("--recipe"), cmd.all("--set"));
    const plan::Cluster cluster = cluster_of(cmd);
    const plan::Options options = options_of(cmd);
    auto rows = plan::plan(recipe, cluster, options);
    std::stable_sort(rows.begin(), rows.end(), [](const plan::Estimate& a, const plan::Estimate& b) {
      if (a.fits != b.fits) return a.fits;
      if (recompute_cost(a.layout) != recompute_cost(b.layout))
        return recompute_cost(a.layout) < recompute_cost(b.layout);
      if (a.layout.distributed != b.layout.distributed) return !a.layout.distributed;
      if (a.layout.bf16_params != b.layout.bf16_params) return !a.layout.bf16_params;
      return inter_node_bytes(a.traffic) < inter_node_bytes(b.traffic);
    });
    if (!cmd.get("--json").empty()) {
      nlohmann::json all = nlohmann::json::array();
      for (const auto& r : rows) all.push_back(to_json(r));
      std::ofstream(cmd.get("--json")) << all.dump(1) << "\n";
    }
    const auto fitting = std::count_if(rows.begin(), rows.end(), [](const auto& r) { return r.fits; });
    std::printf("%s on %lld GPUs of %s GiB (%lld per node): %lld of %zu layouts fit\n", recipe.name().c_str(),
                static_cast<long long>(cluster.gpus), gib(cluster.memory_bytes).c_str(),
                static_cast<long long>(cluster.per_node()), static_cast<long long>(fitting), rows.size());
    std::printf(
        "| TP | ETP | EP | DP | optimizer | recompute | params | grads | optim | activations | peak GiB | fits | "
        "TP GiB/step | ETP GiB/step | EP GiB/step | DP GiB/step |\n"
        "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n");
    for (const auto& r : rows) {
      if (r.fits || cmd.has("--all")) print_row(r);
    }
    if (fitting == 0) {
      std::printf(
          "no layout fits: add GPUs, lower train.micro_batch_size or data.seq_len, or fine-tune with "
          "finetune.lora and finetune.base_dtype: BF16\n");
    }
    return fitting > 0 ? 0 : 3;
  });
}
