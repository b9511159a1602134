// Cairo's "toy" text API is enough here: one face, left-to-right labels, no shaping beyond what
// fontconfig's font gives. Text sizes are set per call, so the context's font state is never
// relied on between calls.
#include "painter.h"

#include <cmath>
#include <numbers>

#include "kvpr/common/error.h"

namespace kvpr::plot::detail {
namespace {

constexpr const char* kFace = "sans-serif";
constexpr const char* kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence at text[pos], or 0 when it is invalid (overlong forms,
// surrogates and code points above U+10FFFF are invalid).
std::size_t utf8_length(const std::string& text, std::size_t pos) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) return 1;
  std::size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2, lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3, lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
  } else {
    return 0;
  }
  for (std::size_t i = 1; i <= need; ++i) {
    if (pos + i >= text.size() || byte(pos + i) < lo || byte(pos + i) > hi) return 0;
    lo = 0x80, hi = 0xBF;
  }
  return need + 1;
}

}  // namespace

std::string printable(const std::string& text) {
  std::string out;
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t n = utf8_length(text, pos);
    const auto b0 = static_cast<unsigned char>(text[pos]);
    const bool c1 = b0 == 0xC2 && n == 2 && static_cast<unsigned char>(text[pos + 1]) < 0xA0;
    if (n == 0 || b0 < 0x20 || b0 == 0x7f || c1) {
      out += kReplacement;  // invalid byte, C0 or C1 control
      pos += n == 0 ? 1 : n;
    } else {
      out.append(text, pos, n);
      pos += n;
    }
  }
  return out;
}

Painter::Painter(int width, int height)
    : surface_(cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height)),
      cr_(cairo_create(surface_.get())) {
  if (const auto status = cairo_surface_status(surface_.get()); status != CAIRO_STATUS_SUCCESS) {
    fail("plot: cannot create a ", width, "x", height, " image: ", cairo_status_to_string(status));
  }
  check();
  cairo_select_font_face(cr(), kFace, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  set_colour(0xffffff);
  cairo_paint(cr());
}

void Painter::set_colour(std::uint32_t rgb) const {
  cairo_set_source_rgb(cr(), ((rgb >> 16) & 0xff) / 255.0, ((rgb >> 8) & 0xff) / 255.0,
                       (rgb & 0xff) / 255.0);
}

void Painter::fill(const Rect& r, std::uint32_t rgb) const {
  set_colour(rgb);
  cairo_rectangle(cr(), r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0);
  cairo_fill(cr());
}

void Painter::outline(const Rect& r, std::uint32_t rgb) const {
  set_colour(rgb);
  cairo_set_line_width(cr(), 1);
  cairo_set_dash(cr(), nullptr, 0, 0);
  cairo_rectangle(cr(), r.x0 + 0.5, r.y0 + 0.5, r.x1 - r.x0 - 1, r.y1 - r.y0 - 1);
  cairo_stroke(cr());
}

double Painter::text_width(const std::string& text, double size) const {
  cairo_set_font_size(cr(), size);
  cairo_text_extents_t extents;
  cairo_text_extents(cr(), printable(text).c_str(), &extents);
  return extents.x_advance;
}

double Painter::ascent(double size) const {
  cairo_set_font_size(cr(), size);
  cairo_font_extents_t extents;
  cairo_font_extents(cr(), &extents);
  return extents.ascent;
}

double Painter::descent(double size) const {
  cairo_set_font_size(cr(), size);
  cairo_font_extents_t extents;
  cairo_font_extents(cr(), &extents);
  return extents.descent;
}

void Painter::text(double x, double top, const std::string& text, std::uint32_t rgb,
                   double size) const {
  set_colour(rgb);
  cairo_move_to(cr(), x, top + ascent(size));
  cairo_show_text(cr(), printable(text).c_str());
  cairo_new_path(cr());
}

void Painter::text_up(double x, double bottom, const std::string& text, std::uint32_t rgb,
                      double size) const {
  cairo_save(cr());
  cairo_translate(cr(), x, bottom);
  cairo_rotate(cr(), -std::numbers::pi / 2);
  this->text(0, 0, text, rgb, size);
  cairo_restore(cr());
}

void Painter::check() const {
  if (const auto status = cairo_status(cr()); status != CAIRO_STATUS_SUCCESS) {
    fail("plot: drawing failed: ", cairo_status_to_string(status));
  }
}

}  // namespace kvpr::plot::detail
