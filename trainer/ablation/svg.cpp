#include "trainer/ablation/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace moetrain::trainer::svg {
namespace {

const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                          "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
                          "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

}  // namespace

std::string line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                       const std::vector<Series>& series) {
  const double W = 760, H = 420, L = 70, R = 200, T = 40, B = 50;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points)
      if (std::isfinite(y))
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << escape(title)
    << "</text>\n";
  for (int i = 0; i <= 5; ++i) {
    const double y = y0 + (y1 - y0) * i / 5, x = x0 + (x1 - x0) * i / 5;
    o << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << py(y) << "\" y2=\"" << py(y)
      << "\" stroke=\"#ddd\"/>\n"
      << "<text x=\"" << L - 6 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">" << fmt(y) << "</text>\n"
      << "<text x=\"" << px(x) << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">" << fmt(x)
      << "</text>\n";
  }
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
    << "\" fill=\"none\" stroke=\"black\"/>\n"
    << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">"
    << escape(x_label) << "</text>\n"
    << "<text transform=\"translate(16," << (T + H - B) / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << escape(y_label) << "</text>\n";
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))];
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.6\" points=\"";
    for (const auto& [x, y] : series[i].points)
      if (std::isfinite(y)) o << px(x) << "," << py(y) << " ";
    o << "\"/>\n<line x1=\"" << W - R + 12 << "\" x2=\"" << W - R + 32 << "\" y1=\"" << T + 8 + 16 * i
      << "\" y2=\"" << T + 8 + 16 * i << "\" stroke=\"" << color << "\" stroke-width=\"3\"/>\n<text x=\""
      << W - R + 38 << "\" y=\"" << T + 12 + 16 * i << "\">" << escape(series[i].label) << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

std::string heatmap(const std::string& title, const std::vector<std::string>& rows,
                    const std::vector<std::string>& cols, const std::vector<std::vector<double>>& values) {
  const double cell = 28, L = 110, T = 50;  // columns are experts, labelled by index
  double lo = 1e300, hi = -1e300;
  for (const auto& r : values)
    for (double v : r) lo = std::min(lo, v), hi = std::max(hi, v);
  if (lo > hi) lo = 0, hi = 1;
  const std::string heading = title + " (white " + fmt(lo) + ", dark " + fmt(hi) + ")";
  const double W = std::max(L + cell * cols.size() + 20, 16 + 6.5 * heading.size()),
               H = T + cell * rows.size() + 20;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"8\" y=\"18\" font-size=\"12\">" << escape(heading) << "</text>\n";
  for (size_t c = 0; c < cols.size(); ++c) {
    o << "<text x=\"" << L + cell * c + cell / 2 << "\" y=\"" << T - 6 << "\" text-anchor=\"middle\">"
      << escape(cols[c]) << "</text>\n";
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    o << "<text x=\"" << L - 6 << "\" y=\"" << T + cell * r + cell / 2 + 4 << "\" text-anchor=\"end\">"
      << escape(rows[r]) << "</text>\n";
    for (size_t c = 0; c < cols.size() && c < values[r].size(); ++c) {
      const double t = hi > lo ? (values[r][c] - lo) / (hi - lo) : 0;
      const int shade = static_cast<int>(255 - 200 * t);
      o << "<rect x=\"" << L + cell * c << "\" y=\"" << T + cell * r << "\" width=\"" << cell - 1
        << "\" height=\"" << cell - 1 << "\" fill=\"rgb(" << shade << "," << shade << ",255)\"><title>"
        << escape(rows[r]) << " / " << escape(cols[c]) << ": " << fmt(values[r][c]) << "</title></rect>\n";
    }
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace moetrain::trainer::svg
