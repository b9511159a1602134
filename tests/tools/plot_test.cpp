// Charts are written as PNG, then read back through Cairo's own PNG reader (libpng underneath):
// the file must be a valid 8-bit RGB PNG of the chart's size, and its pixels must show what the
// chart says — lines through the data points where frame_of maps them, markers centred on their
// points, every colour present, text drawn (invalid text as U+FFFD).
#include "kvpr/plot/plot.h"

#include <cairo.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "kvpr/common/error.h"

namespace kvpr::plot {
namespace {

namespace fs = std::filesystem;

struct Image {
  int width = 0, height = 0;
  std::vector<std::uint32_t> rgb;  // 0xRRGGBB, row-major from the top-left

  std::uint32_t at(double x, double y) const {
    const int i = static_cast<int>(std::floor(x)), j = static_cast<int>(std::floor(y));
    if (i < 0 || j < 0 || i >= width || j >= height) return 0xffffffffu;  // matches no colour
    return rgb[static_cast<std::size_t>(j) * width + i];
  }
  bool operator==(const Image&) const = default;
};

struct SurfaceFree {
  void operator()(cairo_surface_t* s) const { cairo_surface_destroy(s); }
};

void read_png(const fs::path& path, Image& image) {
  const std::unique_ptr<cairo_surface_t, SurfaceFree> surface(
      cairo_image_surface_create_from_png(path.c_str()));
  ASSERT_EQ(cairo_surface_status(surface.get()), CAIRO_STATUS_SUCCESS)
      << path << ": " << cairo_status_to_string(cairo_surface_status(surface.get()));
  ASSERT_EQ(cairo_image_surface_get_format(surface.get()), CAIRO_FORMAT_RGB24);  // opaque RGB
  image.width = cairo_image_surface_get_width(surface.get());
  image.height = cairo_image_surface_get_height(surface.get());
  const int stride = cairo_image_surface_get_stride(surface.get());
  const unsigned char* data = cairo_image_surface_get_data(surface.get());
  for (int y = 0; y < image.height; ++y) {
    const auto* row =
        reinterpret_cast<const std::uint32_t*>(data + static_cast<std::size_t>(y) * stride);
    for (int x = 0; x < image.width; ++x) image.rgb.push_back(row[x] & 0xffffff);
  }
}

std::vector<std::uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::uint32_t be32(const std::vector<std::uint8_t>& d, std::size_t at) {
  return std::uint32_t{d.at(at)} << 24 | std::uint32_t{d.at(at + 1)} << 16 |
         std::uint32_t{d.at(at + 2)} << 8 | std::uint32_t{d.at(at + 3)};
}

// Each channel within tolerance (antialiased edges blend colours; interiors are exact).
bool near(std::uint32_t a, std::uint32_t b, int tolerance = 16) {
  if ((a | b) > 0xffffff) return false;
  for (int shift = 0; shift < 24; shift += 8) {
    if (std::abs(static_cast<int>((a >> shift) & 0xff) - static_cast<int>((b >> shift) & 0xff)) >
        tolerance) {
      return false;
    }
  }
  return true;
}

std::size_t count_near(const Image& image, std::uint32_t colour, int tolerance = 16) {
  return static_cast<std::size_t>(
      std::count_if(image.rgb.begin(), image.rgb.end(),
                    [&](std::uint32_t c) { return near(c, colour, tolerance); }));
}

Chart step_time_chart() {
  Chart chart;
  chart.title = "T(l): decode step time vs layers offloaded";
  chart.x_label = "offloaded layers l";
  chart.y_label = "step time [ms]";
  Series measured{"measured", {}, {}, 0x1f77b4, true, false};
  Series predicted{"predicted", {}, {}, 0xff7f0e, false, true};
  for (int l = 0; l <= 32; l += 2) {
    measured.x.push_back(l);
    measured.y.push_back(40 + 0.08 * (l - 14) * (l - 14) + (l % 4 == 0 ? 1.5 : -1.0));
    predicted.x.push_back(l);
    predicted.y.push_back(40 + 0.08 * (l - 14) * (l - 14));
  }
  chart.series = {measured, predicted};
  chart.markers = {{14, 40, "chosen", 0xd62728}, {12, 40.8, "best", 0x2ca02c}};
  return chart;
}

class PlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / "kvpr_plot_test" /
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The chart written to a fresh file and read back.
  Image render(const Chart& chart) {
    const fs::path path = dir_ / ("chart" + std::to_string(count_++) + ".png");
    write_png(chart, path);
    Image image;
    read_png(path, image);
    return image;
  }

  fs::path dir_;
  int count_ = 0;
};

TEST_F(PlotTest, WritesAnRgbPngOfTheChartsSize) {
  for (const auto& [w, h] : {std::pair{900, 560}, std::pair{333, 211}}) {
    Chart chart = step_time_chart();
    chart.width = w;
    chart.height = h;
    const fs::path path = dir_ / "chart.png";
    write_png(chart, path);
    const auto bytes = read_bytes(path);
    const std::vector<std::uint8_t> signature = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    ASSERT_GE(bytes.size(), 33u);
    EXPECT_TRUE(std::equal(signature.begin(), signature.end(), bytes.begin()));
    EXPECT_EQ(std::string(bytes.begin() + 12, bytes.begin() + 16), "IHDR");
    EXPECT_EQ(be32(bytes, 16), static_cast<std::uint32_t>(w));
    EXPECT_EQ(be32(bytes, 20), static_cast<std::uint32_t>(h));
    EXPECT_EQ(bytes[24], 8);  // bit depth
    EXPECT_EQ(bytes[25], 2);  // RGB, no alpha
    Image image;
    ASSERT_NO_FATAL_FAILURE(read_png(path, image));
    EXPECT_EQ(image.width, w);
    EXPECT_EQ(image.height, h);
    EXPECT_EQ(image.at(0, 0), 0xffffffu);  // white margin
  }
}

TEST_F(PlotTest, LinesAndMarkersLandWhereTheDataSays) {
  Chart chart;
  chart.series.push_back({"", {0, 1, 2, 3, 4}, {1, 3, 2, 4, 3}, 0x9467bd, false, false});
  chart.markers = {{2.5, 1, "", 0xd62728}, {0.5, 3.5, "", 0x2ca02c}};
  const Frame f = frame_of(chart);
  EXPECT_LE(f.x_lo, 0);
  EXPECT_GE(f.x_hi, 4);
  EXPECT_EQ(f.y_lo, 0);  // no negative y: the axis starts at 0
  EXPECT_GE(f.y_hi, 4);
  EXPECT_LT(f.left, f.right);
  EXPECT_GT(f.bottom, f.top);
  const Image image = render(chart);
  const auto& s = chart.series[0];
  for (std::size_t i = 0; i + 1 < s.x.size(); ++i) {
    for (const double t : {0.25, 0.5, 0.75}) {  // along each segment
      const double x = s.x[i] + t * (s.x[i + 1] - s.x[i]), y = s.y[i] + t * (s.y[i + 1] - s.y[i]);
      EXPECT_TRUE(near(image.at(f.px(x), f.py(y)), s.rgb))
          << "line at (" << x << ", " << y << "): " << std::hex << image.at(f.px(x), f.py(y));
      // Well above and below the line: background or grid, not the line.
      EXPECT_FALSE(near(image.at(f.px(x), f.py(y) - 25), s.rgb, 64)) << x;
      EXPECT_FALSE(near(image.at(f.px(x), f.py(y) + 25), s.rgb, 64)) << x;
    }
  }
  for (const auto& m : chart.markers) {
    EXPECT_EQ(image.at(f.px(m.x), f.py(m.y)), m.rgb) << "marker at " << m.x << ", " << m.y;
    EXPECT_FALSE(near(image.at(f.px(m.x) + 20, f.py(m.y)), m.rgb, 64));
  }
}

TEST_F(PlotTest, ShowsEverySeriesMarkerAndText) {
  const Chart chart = step_time_chart();
  const Image image = render(chart);
  EXPECT_GT(count_near(image, 0x1f77b4), 200u);
  EXPECT_GT(count_near(image, 0xff7f0e), 200u);
  EXPECT_GT(count_near(image, 0xd62728), 50u);
  EXPECT_GT(count_near(image, 0x2ca02c), 50u);
  const Frame f = frame_of(chart);
  for (const auto& m : chart.markers) {
    EXPECT_EQ(image.at(f.px(m.x), f.py(m.y)), m.rgb) << m.label;
  }
  // Mostly white background, with dark text and axes.
  EXPECT_GT(count_near(image, 0xffffff), image.rgb.size() / 2);
  EXPECT_GT(count_near(image, 0x222222, 48), 500u);
}

TEST_F(PlotTest, DashedLinesDrawFewerPixels) {
  Chart chart;
  chart.series.push_back({"line", {0, 1, 2, 3}, {0, 3, 1, 2}, 0x9467bd, false, false});
  const std::size_t solid = count_near(render(chart), 0x9467bd);
  chart.series[0].dashed = true;
  const std::size_t dashed = count_near(render(chart), 0x9467bd);
  EXPECT_GT(dashed, 0u);
  EXPECT_LT(dashed, solid * 3 / 4);
}

TEST_F(PlotTest, RendersTextAndInvalidText) {
  Chart chart = step_time_chart();
  const Image plain = render(chart);
  EXPECT_TRUE(render(chart) == plain);  // deterministic
  chart.title = "T(l): decode step time vs layers offloadeD";
  EXPECT_FALSE(render(chart) == plain);
  chart.title = "a b";
  const Image blank = render(chart);
  chart.title =
      "a\xEF\xBF\xBD"
      "b";  // U+FFFD
  const Image replacement = render(chart);
  EXPECT_FALSE(replacement == blank);
  // A control character and invalid UTF-8 are drawn as U+FFFD (Cairo would reject them).
  for (const char* title : {"a\x01"
                            "b",
                            "a\xff"
                            "b",
                            "a\xc3"
                            "b"}) {
    chart.title = title;
    EXPECT_TRUE(render(chart) == replacement) << chart.title;
  }
}

TEST_F(PlotTest, HandlesDegenerateData) {
  Chart chart;
  chart.series.push_back({"flat", {1, 2, 3}, {0, 0, 0}});
  EXPECT_GT(count_near(render(chart), 0x1f77b4), 0u);
  chart.series = {{"one point", {5}, {-2}}};
  EXPECT_GT(count_near(render(chart), 0x1f77b4), 0u);
  chart.series = {{"gaps", {0, 1, NAN, 3, 4}, {1, INFINITY, 2, 3, 4}}};
  EXPECT_GT(count_near(render(chart), 0x1f77b4), 0u);
  chart.series.clear();
  chart.markers = {{1e9, 3e-7, "only a marker"}};
  EXPECT_GT(count_near(render(chart), 0xd62728), 0u);
  chart.markers.clear();
  chart.series = {{"nearly flat", {1, 2}, {1e9, 1e9 + 1e-7}}};  // ticks closer than doubles tell
  EXPECT_GT(count_near(render(chart), 0x1f77b4), 0u);
  chart.series = {{"too wide", {-1e308, 1e308}, {1, 2}}};
  EXPECT_THROW(frame_of(chart), Error);
}

TEST_F(PlotTest, EmptyOrInvalidChartThrows) {
  EXPECT_THROW(frame_of(Chart{}), Error);
  EXPECT_THROW(write_png(Chart{}, dir_ / "empty.png"), Error);
  EXPECT_FALSE(fs::exists(dir_ / "empty.png"));
  Chart chart;
  chart.series.push_back({"nan", {NAN, 1}, {1, NAN}});
  EXPECT_THROW(frame_of(chart), Error);
  chart.series = {{"ragged", {1, 2, 3}, {1, 2}}};
  try {
    frame_of(chart);
    ADD_FAILURE() << "no throw for mismatched x and y";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ragged"), std::string::npos) << e.what();
  }
  chart = step_time_chart();
  chart.width = 10;
  EXPECT_THROW(frame_of(chart), Error);
}

TEST_F(PlotTest, UnwritablePathThrowsNamingIt) {
  const fs::path path = dir_ / "no-such-dir" / "chart.png";
  try {
    write_png(step_time_chart(), path);
    ADD_FAILURE() << "no throw writing " << path;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace kvpr::plot
