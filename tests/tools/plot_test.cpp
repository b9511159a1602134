// The PNG is checked by an independent reader written here: chunk CRCs (bitwise CRC-32, not the
// writer's table), the zlib stream's stored deflate blocks and Adler-32, filter bytes; the decoded
// pixels must equal render_rgb. The raster itself is checked for what a chart must show.
#include "kvpr/plot/plot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kvpr/common/error.h"

namespace kvpr::plot {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

std::uint32_t reference_crc32(const std::uint8_t* data, std::size_t size) {
  std::uint32_t crc = 0xffffffffu;
  for (std::size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::uint32_t reference_adler32(const Bytes& data) {
  std::uint32_t a = 1, b = 0;
  for (const std::uint8_t byte : data) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

std::uint32_t be32(const Bytes& d, std::size_t at) {
  return std::uint32_t{d.at(at)} << 24 | std::uint32_t{d.at(at + 1)} << 16 |
         std::uint32_t{d.at(at + 2)} << 8 | std::uint32_t{d.at(at + 3)};
}

struct DecodedPng {
  std::uint32_t width = 0, height = 0;
  Bytes ihdr;
  int stored_blocks = 0;
  Bytes rgb;
};

// Decodes the subset the writer produces; any deviation from valid PNG fails the test.
void decode_png(const Bytes& file, DecodedPng& png) {
  const Bytes signature = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  ASSERT_GE(file.size(), 8u);
  ASSERT_EQ(Bytes(file.begin(), file.begin() + 8), signature);

  std::vector<std::string> types;
  Bytes idat;
  std::size_t at = 8;
  while (at < file.size()) {
    ASSERT_LE(at + 12, file.size());
    const std::uint32_t length = be32(file, at);
    ASSERT_LE(at + 12 + length, file.size());
    const std::string type(file.begin() + at + 4, file.begin() + at + 8);
    const std::uint8_t* body = file.data() + at + 4;
    EXPECT_EQ(be32(file, at + 8 + length), reference_crc32(body, 4 + length))
        << "CRC of chunk " << type;
    const Bytes data(body + 4, body + 4 + length);
    if (type == "IHDR") png.ihdr = data;
    if (type == "IDAT") idat.insert(idat.end(), data.begin(), data.end());
    types.push_back(type);
    at += 12 + length;
  }
  ASSERT_EQ(at, file.size());
  ASSERT_GE(types.size(), 3u);
  EXPECT_EQ(types.front(), "IHDR");
  EXPECT_EQ(types.back(), "IEND");
  ASSERT_EQ(png.ihdr.size(), 13u);
  png.width = be32(png.ihdr, 0);
  png.height = be32(png.ihdr, 4);
  EXPECT_EQ(png.ihdr[8], 8);   // bit depth
  EXPECT_EQ(png.ihdr[9], 2);   // RGB
  EXPECT_EQ(png.ihdr[10], 0);  // deflate
  EXPECT_EQ(png.ihdr[11], 0);  // filter method
  EXPECT_EQ(png.ihdr[12], 0);  // no interlace

  // zlib header, then stored blocks (each starts on a byte boundary), then Adler-32.
  ASSERT_GE(idat.size(), 2u + 5u + 4u);
  EXPECT_EQ(idat[0] & 0x0f, 8);
  EXPECT_EQ((idat[0] * 256 + idat[1]) % 31, 0);
  EXPECT_EQ(idat[1] & 0x20, 0);  // no preset dictionary
  Bytes raw;
  std::size_t pos = 2;
  for (bool final = false; !final;) {
    ASSERT_LE(pos + 5, idat.size());
    final = idat[pos] & 1;
    ASSERT_EQ((idat[pos] >> 1) & 3, 0) << "not a stored block";
    const std::uint16_t len = idat[pos + 1] | idat[pos + 2] << 8;
    const std::uint16_t nlen = idat[pos + 3] | idat[pos + 4] << 8;
    ASSERT_EQ(static_cast<std::uint16_t>(~len), nlen);
    ASSERT_LE(pos + 5 + len, idat.size());
    raw.insert(raw.end(), idat.begin() + pos + 5, idat.begin() + pos + 5 + len);
    pos += 5 + len;
    ++png.stored_blocks;
  }
  ASSERT_EQ(pos + 4, idat.size());
  EXPECT_EQ(be32(idat, pos), reference_adler32(raw));

  const std::size_t row = std::size_t{png.width} * 3;
  ASSERT_EQ(raw.size(), (row + 1) * png.height);
  for (std::uint32_t y = 0; y < png.height; ++y) {
    const auto* line = raw.data() + y * (row + 1);
    ASSERT_EQ(line[0], 0) << "filter of row " << y;
    png.rgb.insert(png.rgb.end(), line + 1, line + 1 + row);
  }
}

Bytes read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::size_t count_colour(const Bytes& rgb, std::uint32_t colour) {
  std::size_t n = 0;
  for (std::size_t i = 0; i + 2 < rgb.size(); i += 3) {
    n += (std::uint32_t{rgb[i]} << 16 | std::uint32_t{rgb[i + 1]} << 8 | rgb[i + 2]) == colour;
  }
  return n;
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
  fs::path dir_;
};

TEST_F(PlotTest, PngDecodesToTheRenderedPixels) {
  for (const auto& [w, h] : {std::pair{900, 560}, std::pair{333, 211}}) {
    Chart chart = step_time_chart();
    chart.width = w;
    chart.height = h;
    const fs::path path = dir_ / "chart.png";
    write_png(chart, path);
    DecodedPng png;
    ASSERT_NO_FATAL_FAILURE(decode_png(read_file(path), png));
    EXPECT_EQ(png.width, static_cast<std::uint32_t>(w));
    EXPECT_EQ(png.height, static_cast<std::uint32_t>(h));
    // 900 x 560 is 1.5 MB raw: many stored blocks of at most 65535 bytes.
    if (w == 900) {
      EXPECT_EQ(png.stored_blocks, (560 * (900 * 3 + 1) + 65534) / 65535);
    }
    const Bytes rgb = render_rgb(chart);
    ASSERT_EQ(rgb.size(), static_cast<std::size_t>(w) * h * 3);
    EXPECT_TRUE(png.rgb == rgb) << w << "x" << h << ": decoded pixels differ from render_rgb";
  }
}

TEST_F(PlotTest, ShowsEverySeriesAndMarkerColour) {
  const Chart chart = step_time_chart();
  const Bytes rgb = render_rgb(chart);
  EXPECT_GT(count_colour(rgb, 0x1f77b4), 200u);
  EXPECT_GT(count_colour(rgb, 0xff7f0e), 200u);
  EXPECT_GT(count_colour(rgb, 0xd62728), 50u);
  EXPECT_GT(count_colour(rgb, 0x2ca02c), 50u);
  // Mostly white background, with dark text and axes.
  EXPECT_GT(count_colour(rgb, 0xffffff), rgb.size() / 3 / 2);
  EXPECT_EQ(rgb[0], 0xff);
  EXPECT_GT(count_colour(rgb, 0x222222), 500u);
}

TEST_F(PlotTest, DashedLinesDrawFewerPixels) {
  Chart chart;
  chart.series.push_back({"line", {0, 1, 2, 3}, {0, 3, 1, 2}, 0x9467bd, false, false});
  const std::size_t solid = count_colour(render_rgb(chart), 0x9467bd);
  chart.series[0].dashed = true;
  const std::size_t dashed = count_colour(render_rgb(chart), 0x9467bd);
  EXPECT_GT(dashed, 0u);
  EXPECT_LT(dashed, solid * 3 / 4);
}

TEST_F(PlotTest, RendersTextAndUnknownCharacters) {
  Chart chart = step_time_chart();
  const Bytes plain = render_rgb(chart);
  EXPECT_TRUE(render_rgb(chart) == plain);  // deterministic
  chart.title = "T(l): decode step time vs layers offloadeD";
  EXPECT_FALSE(render_rgb(chart) == plain);
  // An unknown character is a box, not a blank.
  chart.title = "a b";
  const Bytes blank = render_rgb(chart);
  chart.title =
      "a\x01"
      "b";
  EXPECT_FALSE(render_rgb(chart) == blank);
  chart.title =
      "a\xc3\xa9"
      "b";  // one UTF-8 character, one box: same layout as "a\x01b"
  const Bytes utf8 = render_rgb(chart);
  chart.title =
      "a\x01"
      "b";
  EXPECT_TRUE(render_rgb(chart) == utf8);
}

TEST_F(PlotTest, HandlesDegenerateData) {
  Chart chart;
  chart.series.push_back({"flat", {1, 2, 3}, {0, 0, 0}});
  EXPECT_GT(count_colour(render_rgb(chart), 0x1f77b4), 0u);
  chart.series = {{"one point", {5}, {-2}}};
  EXPECT_GT(count_colour(render_rgb(chart), 0x1f77b4), 0u);
  chart.series = {{"gaps", {0, 1, NAN, 3, 4}, {1, INFINITY, 2, 3, 4}}};
  EXPECT_GT(count_colour(render_rgb(chart), 0x1f77b4), 0u);
  chart.series.clear();
  chart.markers = {{1e9, 3e-7, "only a marker"}};
  EXPECT_GT(count_colour(render_rgb(chart), 0xd62728), 0u);
  chart.markers.clear();
  chart.series = {{"nearly flat", {1, 2}, {1e9, 1e9 + 1e-7}}};  // ticks closer than doubles tell
  EXPECT_GT(count_colour(render_rgb(chart), 0x1f77b4), 0u);
  chart.series = {{"too wide", {-1e308, 1e308}, {1, 2}}};
  EXPECT_THROW(render_rgb(chart), Error);
}

TEST_F(PlotTest, EmptyOrInvalidChartThrows) {
  EXPECT_THROW(render_rgb(Chart{}), Error);
  EXPECT_THROW(write_png(Chart{}, dir_ / "empty.png"), Error);
  EXPECT_FALSE(fs::exists(dir_ / "empty.png"));
  Chart chart;
  chart.series.push_back({"nan", {NAN, 1}, {1, NAN}});
  EXPECT_THROW(render_rgb(chart), Error);
  chart.series = {{"ragged", {1, 2, 3}, {1, 2}}};
  try {
    render_rgb(chart);
    ADD_FAILURE() << "no throw for mismatched x and y";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ragged"), std::string::npos) << e.what();
  }
  chart = step_time_chart();
  chart.width = 10;
  EXPECT_THROW(render_rgb(chart), Error);
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
