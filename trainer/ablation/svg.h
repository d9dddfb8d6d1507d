// Minimal SVG figures for the ablation report: line charts, interval (dot-and-whisker) charts and
// heatmaps, readable in any browser. Series i is drawn in colour i and marker i (20 colours, 7 markers:
// every series of up to 20 has its own colour, and neighbours differ in marker too).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace moetrain::trainer::svg {

struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (x, y)
  std::vector<std::pair<double, double>> bars;    // empty, or (low, high) of each point: error bars
};

// Line chart with axes, ticks, a marker at each point, error bars where given, and a legend.
std::string line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                       const std::vector<Series>& series);

// One point per category (a variant) with its interval as an error bar; `reference` draws a dashed
// horizontal line at that y (for example 0 for differences), NaN for none. Categories are labelled
// under the axis.
struct Estimate {
  std::string label;
  double value = 0, low = 0, high = 0;  // low/high NaN: no interval (drawn as a point alone)
};
std::string interval_chart(const std::string& title, const std::string& y_label,
                           const std::vector<Estimate>& estimates, double reference);

// Heatmap of values[row][col] with row and column labels and the value range in the title.
std::string heatmap(const std::string& title, const std::vector<std::string>& rows,
                    const std::vector<std::string>& cols, const std::vector<std::vector<double>>& values);

}  // namespace moetrain::trainer::svg
