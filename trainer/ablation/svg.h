// Minimal SVG figures for the ablation report: line charts and heatmaps, readable in any browser.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace moetrain::trainer::svg {

struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (x, y)
};

// Line chart with axes, ticks and a legend.
std::string line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                       const std::vector<Series>& series);

// Heatmap of values[row][col] with row and column labels and the value range in the title.
std::string heatmap(const std::string& title, const std::vector<std::string>& rows,
                    const std::vector<std::string>& cols, const std::vector<std::vector<double>>& values);

}  // namespace moetrain::trainer::svg
