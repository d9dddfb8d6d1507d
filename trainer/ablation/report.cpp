#include "trainer/ablation/report.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>

#include "trainer/ablation/figures.h"

namespace moetrain::trainer::ablation {
namespace {

using nlohmann::json;

// The report's columns: metric key, heading, decimals.
struct Column {
  const char* key;
  const char* heading;
  int digits;
};
const Column kSummary[] = {{"val_ppl", "val ppl", 2},
                           {"val_max_vio", "val MaxVio_global", 3},
                           {"batch_max_vio", "batch MaxVio (last quarter)", 3},
                           {"dropped_frac", "dropped frac", 4},
                           {"tokens_per_s", "tokens/s", 0}};
const Column kCompared[] = {kSummary[0], kSummary[1], kSummary[2]};  // lower is better in each

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "–";
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

// "m ± s [lo, hi]", or "m" with one seed; "–" when the runs lack the metric.
std::string cell(const std::map<std::string, stats::Interval>& table, const std::string& key, int digits) {
  const auto it = table.find(key);
  if (it == table.end()) return "–";
  const stats::Interval& i = it->second;
  if (i.n < 2) return fixed(i.mean, digits);
  return fixed(i.mean, digits) + " ± " + fixed(i.std, digits) + " [" + fixed(i.lo, digits) + ", " +
         fixed(i.hi, digits) + "]";
}

// A paired difference with its interval, bold and starred when the interval excludes 0.
std::string difference_cell(const VariantResult& v, const std::string& key, int digits) {
  const auto it = v.vs_baseline.find(key);
  if (it == v.vs_baseline.end()) return "–";
  const stats::Interval& d = it->second;
  const std::string sign = d.mean > 0 ? "+" : "";
  if (d.n < 2) return sign + fixed(d.mean, digits);
  const std::string text = sign + fixed(d.mean, digits) + " [" + fixed(d.lo, digits) + ", " +
                           fixed(d.hi, digits) + "]";
  return d.excludes_zero() ? "**" + text + "** *" : text;
}

json interval_json(const stats::Interval& i) {
  return {{"n", i.n}, {"mean", i.mean}, {"std", i.std}, {"lo", i.lo}, {"hi", i.hi}};
}

// The conclusions section: for each compared metric, the variants whose difference is resolved, and
// how many are not; nothing is claimed beyond "the 95% interval excludes 0".
std::string conclusions(const std::vector<VariantResult>& results, const std::string& baseline, int n) {
  std::ostringstream md;
  md << "## Conclusions\n\nA difference is *resolved* when its 95% paired t-interval (n = " << n
     << " seeds) excludes 0; no correction is made for comparing several variants, so with many variants a "
        "few resolved differences are expected by chance. An unresolved difference is not evidence of no "
        "effect: the interval says how large an effect the study could have missed.\n\n";
  if (n < 2) return md.str() + "One seed per variant: no interval, so no difference is resolved.\n\n";
  for (const Column& c : kCompared) {
    std::vector<std::string> lower, higher, unresolved;
    for (const auto& v : results) {
      const auto it = v.vs_baseline.find(c.key);
      if (it == v.vs_baseline.end()) continue;
      (it->second.excludes_zero() ? (it->second.mean < 0 ? lower : higher) : unresolved).push_back(v.name);
    }
    auto list = [](const std::vector<std::string>& names) {
      std::string out;
      for (const auto& s : names) out += (out.empty() ? "`" : ", `") + s + "`";
      return out;
    };
    md << "- **" << c.heading << "**:";
    if (!lower.empty()) md << " lower than `" << baseline << "`: " << list(lower) << ".";
    if (!higher.empty()) md << " higher than `" << baseline << "`: " << list(higher) << ".";
    if (!unresolved.empty()) md << " no difference resolved at n=" << n << ": " << list(unresolved) << ".";
    md << "\n";
  }
  return md.str() + "\n";
}

}  // namespace

json report_json(const Study& study, const std::vector<VariantResult>& results, const std::vector<Run>& runs,
                 const std::string& command) {
  json variants = json::array();
  for (size_t v = 0; v < results.size(); ++v) {
    const VariantResult& r = results[v];
    json jr = {{"name", r.name},
               {"runs", json::array()},
               {"stats", json::object()},
               {"vs_baseline", json::object()}};
    size_t k = 0;
    for (const auto& run : runs) {
      if (run.variant != v) continue;
      jr["runs"].push_back(
          {{"seed", run.seed}, {"dir", run.dir}, {"steps", r.runs[k].steps}, {"values", r.runs[k].values}});
      ++k;
    }
    for (const auto& [key, i] : r.stats) jr["stats"][key] = interval_json(i);
    for (const auto& [key, i] : r.vs_baseline) {
      jr["vs_baseline"][key] = interval_json(i);
      jr["vs_baseline"][key]["significant"] = i.excludes_zero();
    }
    variants.push_back(jr);
  }
  return {{"command", command},
          {"study", study.source},
          {"baseline", study.baseline},
          {"seeds", study.seeds},
          {"variants", variants}};
}

std::string report_markdown(const Study& study, const std::vector<VariantResult>& results,
                            const std::string& command, const std::string& figures) {
  const int n = static_cast<int>(study.seeds.size());
  std::ostringstream md;
  md << "# Ablation study\n\nGenerated by `moe-ablate` from the runs' metrics files; every number below is read "
        "from them (all of them are in report.json).\n\nCommand: `"
     << command << "`\n\nStudy: `" << study.source << "`; " << results.size() << " variants × " << n
     << " seed(s) (";
  for (size_t i = 0; i < study.seeds.size(); ++i) md << (i ? ", " : "") << study.seeds[i];
  md << "); baseline `" << study.baseline << "`.\n\n## Summary\n\n"
     << (n < 2 ? "One seed: each cell is that run's value, with no spread and no interval."
               : "Mean ± standard deviation over the seeds [95% t-interval of the mean].")
     << "\n\n| variant | steps |";
  for (const Column& c : kSummary) md << " " << c.heading << " |";
  md << "\n|---|---|---|---|---|---|---|\n";
  for (const auto& v : results) {
    md << "| " << v.name << " | " << v.runs.front().steps << " |";
    for (const Column& c : kSummary) md << " " << cell(v.stats, c.key, c.digits) << " |";
    md << "\n";
  }
  md << "\n## Against `" << study.baseline << "`, seed by seed\n\nVariant minus baseline, mean of the paired "
     << "differences [95% paired t-interval]; **bold** with * where the interval excludes 0.\n\n| variant |";
  for (const Column& c : kCompared) md << " Δ " << c.heading << " |";
  md << " val ppl, in words |\n|---|---|---|---|---|\n";
  for (const auto& v : results) {
    if (v.name == study.baseline) continue;
    md << "| " << v.name << " |";
    for (const Column& c : kCompared) md << " " << difference_cell(v, c.key, c.digits) << " |";
    md << " "
       << verdict(v.vs_baseline.count("val_ppl") ? v.vs_baseline.at("val_ppl") : stats::Interval{},
                  study.baseline)
       << " |\n";
  }
  std::set<std::string> domains;
  for (const auto& [key, i] : results.front().stats)
    if (key.rfind("val_ppl/", 0) == 0) domains.insert(key.substr(8));
  md << "\n## Validation perplexity per data domain\n\nMean ± standard deviation over the seeds.\n\n| variant |";
  for (const auto& d : domains) md << " " << d << " |";
  md << "\n|---|";
  for (size_t i = 0; i < domains.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& v : results) {
    md << "| " << v.name << " |";
    for (const auto& d : domains) {
      const auto it = v.stats.find("val_ppl/" + d);
      md << " "
         << (it == v.stats.end()
                 ? "–"
                 : fixed(it->second.mean, 2) + (it->second.n > 1 ? " ± " + fixed(it->second.std, 2) : ""))
         << " |";
    }
    md << "\n";
  }
  md << "\n"
     << conclusions(results, study.baseline, n)
     << "## Definitions\n\nval ppl: exp of the mean validation loss at the last evaluation. MaxVio = (max load − "
        "mean load) / mean load over a layer's experts; MaxVio_global: on the whole validation set at the last "
        "evaluation, averaged over the MoE layers; batch MaxVio: on each training step's batch, averaged over "
        "the layers, then over the last quarter of the steps. Dropped frac and tokens/s: mean over every step "
        "(tokens/s is only comparable between runs that had the machine to themselves). 95% t-interval: mean ± "
        "t(0.975, n−1)·s/√n. Expert-choice routing is not causal, so its loss is not comparable to the "
        "autoregressive variants'.\n\n"
     << "## Figures\n\n![validation perplexity](figures/val_ppl.svg)\n\n"
     << "![difference with the baseline](figures/val_ppl_vs_baseline.svg)\n\n"
     << "![MaxVio_global](figures/val_max_vio.svg)\n\n![validation loss](figures/val_loss.svg)\n\n"
     << "![batch MaxVio](figures/max_vio.svg)\n\n"
     << "## Expert load per layer and specialisation by data domain (first seed, last evaluation)\n\n"
     << figures;
  return md.str();
}

void write_report(const Study& study, const std::vector<VariantResult>& results, const std::vector<Run>& runs,
                  const std::string& out_dir, const std::string& command) {
  ::mkdir((out_dir + "/figures").c_str(), 0755);
  write_study_figures(results, study.baseline, out_dir);
  std::string figures;
  for (const auto& run : runs)
    if (run.seed == study.seeds.front())
      figures += write_expert_figures(results[run.variant].name, run.dir, out_dir);
  write_file(out_dir + "/report.json", report_json(study, results, runs, command).dump(2) + "\n");
  write_file(out_dir + "/report.md", report_markdown(study, results, command, figures));
}

}  // namespace moetrain::trainer::ablation
