#include "trainer/ablation/report.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "trainer/ablation/svg.h"

namespace moetrain::trainer {
namespace {

using nlohmann::json;

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error(path + ": missing; did the variant's run finish? (rerun moe-ablate to resume it)");
  std::vector<json> rows;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      rows.push_back(json::parse(line));
    } catch (const json::parse_error& e) {
      throw std::runtime_error(path + ":" + std::to_string(n) + ": not valid JSON (" + e.what() + ")");
    }
  }
  return rows;
}

double number(const json& row, const char* key) {
  return row.contains(key) && row[key].is_number() ? row[key].get<double>() : NAN;
}

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "–";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

// Last evaluation's routed counts: layer → domain → counts per expert.
std::map<std::string, std::map<std::string, std::vector<double>>> last_domain_load(const std::string& run_dir) {
  const auto rows = read_jsonl(run_dir + "/expert_domains.jsonl");
  std::map<std::string, std::map<std::string, std::vector<double>>> out;
  if (rows.empty()) return out;
  const int64_t last = rows.back()["step"].get<int64_t>();
  for (const auto& r : rows) {
    if (r["step"].get<int64_t>() != last) continue;
    out[r["layer"].get<std::string>()][r["domain"].get<std::string>()] = r["tokens_per_expert"]
                                                                             .get<std::vector<double>>();
  }
  return out;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  if (!(out << text)) throw std::runtime_error(path + ": cannot write; check the output directory");
}

// A layer's routed counts per expert, summed over the domains.
std::vector<double> expert_totals(const std::map<std::string, std::vector<double>>& per_domain) {
  std::vector<double> total;
  for (const auto& [domain, counts] : per_domain) {
    total.resize(counts.size(), 0.0);
    for (size_t e = 0; e < counts.size(); ++e) total[e] += counts[e];
  }
  return total;
}

// Each count's share of their sum (all 0 when the sum is).
std::vector<double> shares(const std::vector<double>& counts) {
  double sum = 0;
  for (double c : counts) sum += c;
  std::vector<double> share;
  for (double c : counts) share.push_back(sum > 0 ? c / sum : 0);
  return share;
}

struct Curves {
  svg::Series val, vio;
};

// A variant's curves from its metrics.jsonl: validation loss at each evaluation, and batch MaxVio as the
// mean of each 10 steps.
Curves training_curves(const std::string& name, const std::string& dir) {
  Curves out{{name, {}}, {name, {}}};
  const auto rows = read_jsonl(dir + "/metrics.jsonl");
  double window = 0;
  int n = 0;
  for (const auto& r : rows) {
    const double step = r["step"].get<double>();
    if (r.contains("val_loss")) out.val.points.emplace_back(step, number(r, "val_loss"));
    window += number(r, "max_vio"), ++n;
    if (n == 10) out.vio.points.emplace_back(step, window / n), window = 0, n = 0;  // mean of 10 steps
  }
  return out;
}

// Per-layer expert load and expert × domain specialisation (of the last MoE layer) at the last
// evaluation: writes OUT/figures/load_NAME.svg and domains_NAME.svg and returns the report's section on
// them; nothing when the run has no domain counts.
std::string write_expert_figures(const std::string& name, const std::string& dir, const std::string& out_dir) {
  const auto load = last_domain_load(dir);
  if (load.empty()) return {};
  std::vector<std::string> layers, experts, domains;
  std::vector<std::vector<double>> layer_share, domain_share;
  for (const auto& [layer, per_domain] : load) {
    layers.push_back(layer), layer_share.push_back(shares(expert_totals(per_domain)));
  }
  for (size_t e = 0; e < layer_share.front().size(); ++e) experts.push_back(std::to_string(e));
  const auto& last_layer = load.rbegin()->second;
  for (const auto& [domain, counts] : last_layer)
    domains.push_back(domain), domain_share.push_back(shares(counts));
  write_file(out_dir + "/figures/load_" + name + ".svg",
             svg::heatmap(name + ": share of validation tokens per expert, by layer", layers, experts,
                          layer_share));
  write_file(out_dir + "/figures/domains_" + name + ".svg",
             svg::heatmap(name + ": " + load.rbegin()->first + ", share of each domain's tokens per expert",
                          domains, experts, domain_share));
  return "### " + name + "\n\n![expert load](figures/load_" + name +
         ".svg)\n![specialisation](figures/domains_" + name + ".svg)\n\n";
}

// OUT/report.md: the summary table, what its columns mean, the figures (`figures`: their sections).
std::string report_markdown(const std::vector<VariantSummary>& summaries, const std::string& command,
                            const std::string& figures) {
  std::ostringstream md;
  md << "# Routing ablation\n\nGenerated by `moe-ablate` from the runs' metrics files; every number below is read "
        "from them.\n\nCommand: `"
     << command << "`\n\n## Summary\n\n"
     << "| variant | steps | val loss | val ppl | val MaxVio_global | mean batch MaxVio | dropped frac | tokens/s | dead experts |\n"
     << "|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& s : summaries) {
    md << "| " << s.name << " | " << s.steps << " | " << fixed(s.val_loss, 4) << " | " << fixed(s.val_ppl, 2)
       << " | " << fixed(s.val_max_vio, 3) << " | " << fixed(s.mean_max_vio, 3) << " | "
       << fixed(s.dropped_frac, 4) << " | " << fixed(s.tokens_per_s, 0) << " | " << s.dead_experts << " |\n";
  }
  md << "\nMaxVio = (max load − mean load) / mean load; MaxVio_global over the whole validation set at the last "
        "evaluation, batch MaxVio over each training step's batch. Dead experts: (layer, expert) pairs that received "
        "no validation token. Expert-choice routing is not causal (an expert picks among all tokens of a sequence), "
        "so its loss is not comparable to the autoregressive variants'.\n\n"
     << "## Validation loss\n\n![validation loss](figures/val_loss.svg)\n\n"
     << "## Load balance over training\n\n![MaxVio](figures/max_vio.svg)\n\n"
     << "## Expert load per layer and specialisation by data domain (last evaluation)\n\n"
     << figures;
  return md.str();
}

}  // namespace

VariantSummary summarize_run(const std::string& name, const std::string& run_dir) {
  VariantSummary s;
  s.name = name;
  const auto rows = read_jsonl(run_dir + "/metrics.jsonl");
  if (rows.empty())
    throw std::runtime_error(run_dir + "/metrics.jsonl: empty; the variant has not trained yet");
  double vio = 0, dropped = 0, tps = 0;
  for (const auto& r : rows) {
    vio += number(r, "max_vio"), dropped += number(r, "dropped_frac"), tps += number(r, "tokens_per_s");
    if (r.contains("val_loss")) {
      s.val_loss = number(r, "val_loss"), s.val_ppl = number(r, "val_ppl"),
      s.val_max_vio = number(r, "val_max_vio");
    }
  }
  s.steps = rows.back()["step"].get<int64_t>();
  s.mean_max_vio = vio / rows.size(), s.dropped_frac = dropped / rows.size(),
  s.tokens_per_s = tps / rows.size();
  for (const auto& [layer, domains] : last_domain_load(run_dir)) {
    for (double c : expert_totals(domains)) s.dead_experts += c == 0;
  }
  return s;
}

std::vector<VariantSummary> write_report(const std::vector<std::pair<std::string, std::string>>& variants,
                                         const std::string& out_dir, const std::string& command) {
  ::mkdir((out_dir + "/figures").c_str(), 0755);
  std::vector<VariantSummary> summaries;
  std::vector<svg::Series> val_curves, vio_curves;
  std::string figures;
  for (const auto& [name, dir] : variants) {
    summaries.push_back(summarize_run(name, dir));
    const Curves curves = training_curves(name, dir);
    val_curves.push_back(curves.val), vio_curves.push_back(curves.vio);
    figures += write_expert_figures(name, dir, out_dir);
  }
  write_file(out_dir + "/figures/val_loss.svg",
             svg::line_chart("Validation loss", "step", "val_loss", val_curves));
  write_file(out_dir + "/figures/max_vio.svg",
             svg::line_chart("Batch MaxVio (mean of 10 steps)", "step", "MaxVio", vio_curves));
  write_file(out_dir + "/report.md", report_markdown(summaries, command, figures));
  return summaries;
}

}  // namespace moetrain::trainer
