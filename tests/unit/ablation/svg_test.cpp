// The report's figures: every series in its own colour and marker, intervals drawn as error bars.
#include "trainer/ablation/svg.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

namespace moetrain::trainer::svg {
namespace {

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The series colours (#rrggbb fills and strokes; the grey grid is #ddd) used in `text`.
std::set<std::string> colours(const std::string& text) {
  std::set<std::string> out;
  for (size_t at = text.find("=\"#"); at != std::string::npos; at = text.find("=\"#", at + 1))
    if (text[at + 9] == '"') out.insert(text.substr(at + 2, 7));
  return out;
}

TEST(Svg, IntervalChartDrawsEveryEstimateInItsOwnColourWithItsErrorBar) {
  std::vector<Estimate> estimates;
  for (int i = 0; i < 9; ++i) estimates.push_back({"v" + std::to_string(i), 10.0 + i, 9.0 + i, 11.0 + i});
  estimates.push_back({"one_seed", 5, NAN, NAN});
  const std::string svg = interval_chart("t", "y", estimates, 0);
  EXPECT_EQ(count(svg, "<path d=\"M"), 9u);  // error bars: not for the estimate without an interval
  EXPECT_EQ(colours(svg).size(), 10u);       // ten series, ten colours (the reference line is black)
  // Markers 0..6 are circle, square, triangle, diamond, triangle, plus, cross; 7.. repeat with new colours.
  EXPECT_EQ(count(svg, "<circle"), 2u);                        // estimates 0 and 7
  EXPECT_EQ(count(svg, "<polygon"), 6u);                       // estimates 1-4, 8 and 9
  EXPECT_NE(svg.find("stroke-dasharray"), std::string::npos);  // the reference line at 0
}

TEST(Svg, LineChartHasMarkersInTheLegendAndErrorBars) {
  Series a{"a", {{1, 1}, {2, 2}}, {{0.5, 1.5}, {1.5, 2.5}}}, b{"b", {{1, 3}, {2, 4}}, {}};
  const std::string svg = line_chart("t", "x", "y", {a, b});
  EXPECT_EQ(count(svg, "<path d=\"M"), 2u);  // a's two error bars
  EXPECT_EQ(count(svg, "<circle"), 3u);      // a: two points and its legend entry
  EXPECT_EQ(count(svg, "<polygon"), 3u);     // b: squares
  EXPECT_EQ(colours(svg).size(), 2u);
}

}  // namespace
}  // namespace moetrain::trainer::svg
