#include "trainer/ablation/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <initializer_list>
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

const char* color(size_t i) { return kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))]; }

// Marker i % 7 centred at (x, y): circle, square, triangle up, diamond, triangle down, plus, cross.
std::string marker(size_t i, double x, double y, const char* c) {
  std::ostringstream o;
  const double r = 4;
  auto polygon = [&](std::initializer_list<std::pair<double, double>> pts) {
    o << "<polygon fill=\"" << c << "\" points=\"";
    for (const auto& [dx, dy] : pts) o << x + dx * r << "," << y + dy * r << " ";
    o << "\"/>";
  };
  auto lines = [&](std::initializer_list<std::pair<double, double>> ends) {
    for (const auto& [dx, dy] : ends)
      o << "<line x1=\"" << x - dx * r << "\" y1=\"" << y - dy * r << "\" x2=\"" << x + dx * r << "\" y2=\""
        << y + dy * r << "\" stroke=\"" << c << "\" stroke-width=\"2.2\"/>";
  };
  switch (i % 7) {
    case 0:
      o << "<circle cx=\"" << x << "\" cy=\"" << y << "\" r=\"" << r << "\" fill=\"" << c << "\"/>";
      break;
    case 1: polygon({{-0.9, -0.9}, {0.9, -0.9}, {0.9, 0.9}, {-0.9, 0.9}}); break;
    case 2: polygon({{0, -1.2}, {1.1, 0.8}, {-1.1, 0.8}}); break;
    case 3: polygon({{0, -1.2}, {1.2, 0}, {0, 1.2}, {-1.2, 0}}); break;
    case 4: polygon({{0, 1.2}, {1.1, -0.8}, {-1.1, -0.8}}); break;
    case 5: lines({{1.2, 0}, {0, 1.2}}); break;
    default: lines({{0.9, 0.9}, {0.9, -0.9}}); break;
  }
  return o.str() + "\n";
}

// A vertical error bar from y_lo to y_hi (pixels) at x, with caps.
std::string error_bar(double x, double y_lo, double y_hi, const char* c) {
  std::ostringstream o;
  o << "<path d=\"M" << x << "," << y_lo << "V" << y_hi << "M" << x - 4 << "," << y_lo << "h8M" << x - 4
    << "," << y_hi << "h8\" stroke=\"" << c << "\" stroke-width=\"1.2\" fill=\"none\"/>\n";
  return o.str();
}

// The plot area and the data ranges mapped onto it.
struct Frame {
  double W, H, L, R, T, B;
  double x0, x1, y0, y1;
  double px(double x) const { return L + (x - x0) / (x1 - x0) * (W - L - R); }
  double py(double y) const { return H - B - (y - y0) / (y1 - y0) * (H - T - B); }
};

// Pads the y range by 5% and widens empty ranges.
void settle_ranges(Frame& f) {
  if (f.x0 > f.x1) f.x0 = 0, f.x1 = 1, f.y0 = 0, f.y1 = 1;
  if (f.x1 == f.x0) f.x1 = f.x0 + 1;
  if (f.y1 == f.y0) f.y1 = f.y0 + 1;
  const double pad = 0.05 * (f.y1 - f.y0);
  f.y0 -= pad, f.y1 += pad;
}

void include_y(Frame& f, double y) {
  if (std::isfinite(y)) f.y0 = std::min(f.y0, y), f.y1 = std::max(f.y1, y);
}

// The opening of the SVG: title, grid, y ticks (x ticks when `x_ticks`), box and axis labels.
std::string axes(const Frame& f, const std::string& title, const std::string& x_label,
                 const std::string& y_label, bool x_ticks) {
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << f.W << "\" height=\"" << f.H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << f.W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << escape(title)
    << "</text>\n";
  for (int i = 0; i <= 5; ++i) {
    const double y = f.y0 + (f.y1 - f.y0) * i / 5, x = f.x0 + (f.x1 - f.x0) * i / 5;
    o << "<line x1=\"" << f.L << "\" x2=\"" << f.W - f.R << "\" y1=\"" << f.py(y) << "\" y2=\"" << f.py(y)
      << "\" stroke=\"#ddd\"/>\n"
      << "<text x=\"" << f.L - 6 << "\" y=\"" << f.py(y) + 4 << "\" text-anchor=\"end\">" << fmt(y)
      << "</text>\n";
    if (x_ticks)
      o << "<text x=\"" << f.px(x) << "\" y=\"" << f.H - f.B + 16 << "\" text-anchor=\"middle\">" << fmt(x)
        << "</text>\n";
  }
  o << "<rect x=\"" << f.L << "\" y=\"" << f.T << "\" width=\"" << f.W - f.L - f.R << "\" height=\""
    << f.H - f.T - f.B << "\" fill=\"none\" stroke=\"black\"/>\n"
    << "<text x=\"" << (f.L + f.W - f.R) / 2 << "\" y=\"" << f.H - 10 << "\" text-anchor=\"middle\">"
    << escape(x_label) << "</text>\n"
    << "<text transform=\"translate(16," << (f.T + f.H - f.B) / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << escape(y_label) << "</text>\n";
  return o.str();
}

}  // namespace

std::string line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                       const std::vector<Series>& series) {
  Frame f{760, 420, 70, 200, 40, 50, 1e300, -1e300, 1e300, -1e300};
  for (const auto& s : series) {
    for (const auto& [x, y] : s.points)
      if (std::isfinite(y)) f.x0 = std::min(f.x0, x), f.x1 = std::max(f.x1, x), include_y(f, y);
    for (const auto& [lo, hi] : s.bars) include_y(f, lo), include_y(f, hi);
  }
  settle_ranges(f);
  std::ostringstream o;
  o << axes(f, title, x_label, y_label, true);
  for (size_t i = 0; i < series.size(); ++i) {
    const char* c = color(i);
    const auto& s = series[i];
    o << "<polyline fill=\"none\" stroke=\"" << c << "\" stroke-width=\"1.6\" points=\"";
    for (const auto& [x, y] : s.points)
      if (std::isfinite(y)) o << f.px(x) << "," << f.py(y) << " ";
    o << "\"/>\n";
    for (size_t p = 0; p < s.points.size(); ++p) {
      const auto& [x, y] = s.points[p];
      if (!std::isfinite(y)) continue;
      if (p < s.bars.size() && std::isfinite(s.bars[p].first) && std::isfinite(s.bars[p].second))
        o << error_bar(f.px(x), f.py(s.bars[p].first), f.py(s.bars[p].second), c);
      if (s.points.size() <= 40) o << marker(i, f.px(x), f.py(y), c);  // dense curves: markers in the legend
    }
    const double ly = f.T + 8 + 16 * i;
    o << "<line x1=\"" << f.W - f.R + 12 << "\" x2=\"" << f.W - f.R + 36 << "\" y1=\"" << ly << "\" y2=\""
      << ly << "\" stroke=\"" << c << "\" stroke-width=\"2\"/>\n"
      << marker(i, f.W - f.R + 24, ly, c) << "<text x=\"" << f.W - f.R + 42 << "\" y=\"" << ly + 4 << "\">"
      << escape(s.label) << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

std::string interval_chart(const std::string& title, const std::string& y_label,
                           const std::vector<Estimate>& estimates, double reference) {
  const double n = static_cast<double>(estimates.size());
  Frame f{std::max(360.0, 120 + 48 * n), 440, 70, 20, 40, 130, -0.5, n - 0.5, 1e300, -1e300};
  for (const auto& e : estimates) include_y(f, e.value), include_y(f, e.low), include_y(f, e.high);
  include_y(f, reference);
  settle_ranges(f);
  std::ostringstream o;
  o << axes(f, title, "", y_label, false);
  if (std::isfinite(reference))
    o << "<line x1=\"" << f.L << "\" x2=\"" << f.W - f.R << "\" y1=\"" << f.py(reference) << "\" y2=\""
      << f.py(reference) << "\" stroke=\"black\" stroke-dasharray=\"5,4\"/>\n";
  for (size_t i = 0; i < estimates.size(); ++i) {
    const auto& e = estimates[i];
    const double x = f.px(static_cast<double>(i));
    if (std::isfinite(e.low) && std::isfinite(e.high)) o << error_bar(x, f.py(e.low), f.py(e.high), color(i));
    if (std::isfinite(e.value)) o << marker(i, x, f.py(e.value), color(i));
    o << "<text transform=\"translate(" << x + 4 << "," << f.H - f.B + 12
      << ") rotate(-40)\" text-anchor=\"end\">" << escape(e.label) << "</text>\n";
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
