#pragma once
/// @file
/// SVG plots of singular-value spectra, for lowrank-inspect: one matrix's spectrum (a tuned
/// checkpoint against its base), or an overview of every matrix's normalized spectrum.
///
/// Format: one standalone SVG 1.1 document (UTF-8, `xmlns` set; lines, polylines, text):
///
///     title    on top, in bold (a smaller font when it is long)
///     x axis   the index i, 1-based and linear (the overview: i / min(m, n) in [0, 1])
///     y axis   sigma_i on a log10 scale: gridlines and labels (1e-3, 1e-2, ...) at whole
///              decades, from the smallest positive value's decade to the largest's, at
///              most 12 decades (the bottom is clamped; a curve is cut where it passes it)
///     curves   one polyline per series, colour-blind-safe colours (Okabe-Ito), a legend
///              (spectrum: one row at the bottom; overview: a column on the right)
///
/// Guarantees:
/// - the output depends on the input only: the same input gives the same bytes (numbers are
///   written with std::to_chars, never through the global locale or a stream);
/// - every number written is finite (no "nan", no "inf"): zeros, negative and non-finite
///   values cannot lie on a log axis and are skipped; when nothing is left the axes are
///   drawn with a note ("all singular values are 0", or "no singular values");
/// - text (title, labels, group names) is escaped (& < > " '); bytes that are not valid
///   UTF-8, and control characters, become U+FFFD or a space, so the document is well-formed;
/// - a series longer than 2000 values is thinned to its first 200, then every k-th value,
///   then its last, so a 4096-long spectrum stays small (an overview curve: longer than 500
///   values, its first 100);
/// - width and height are clamped to [200, 10000] px.

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowrank::tools {

/// One curve of a spectrum plot.
struct plot_series {
  std::string label;           ///< legend text, e.g. "tuned" or "base"
  std::vector<double> values;  ///< singular values, descending, >= 0
};

/// One matrix's spectrum: 1 or 2 series (base vs tuned), with marked ranks.
struct spectrum_plot {
  std::string title;  ///< e.g. "encoder.layer.0.attention.self.query.weight  384 x 384"
  std::vector<plot_series> series;
  /// Vertical dashed lines at index x (1-based rank) with a short label, e.g. {k90, "90%"};
  /// one outside the x axis (or NaN) is not drawn.
  std::vector<std::pair<double, std::string>> markers;
  /// Divide every series by its first value (sigma_1; if that is not positive and finite,
  /// by its largest positive finite value); the y axis is then "sigma_i / sigma_1".
  bool normalize = false;
};

/// One matrix in an overview: its singular values and the group that colours it.
struct overview_curve {
  std::vector<double> values;
  int group = 0;
};

namespace detail {

/// Okabe-Ito: blue, vermillion, green, reddish purple, orange, sky blue, black, yellow.
inline constexpr std::array<std::string_view, 8> palette{
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"};

inline std::string colour(long long i) {
  return std::string(palette[static_cast<std::size_t>((i % 8 + 8) % 8)]);
}

/// A coordinate in px with one decimal, locale-independent ("-0.0" is written "0.0").
inline std::string num(double v) {
  v = std::isfinite(v) ? std::clamp(v, -1e6, 1e6) : 0.0;
  if (std::abs(v) < 0.05) v = 0.0;
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, 1);
  return std::string(buf, r.ptr);
}

/// Text escaped for XML; invalid UTF-8 becomes U+FFFD and control characters a space.
inline std::string esc(std::string_view s) {
  static constexpr std::string_view special = "&<>\"'";
  static constexpr std::array<std::string_view, 5> entity{"&amp;", "&lt;", "&gt;", "&quot;",
                                                          "&apos;"};
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
    if (c < 0x80) {
      const auto e = special.find(static_cast<char>(c));
      if (e != special.npos)
        out += entity[e];
      else
        out += c < 0x20 ? ' ' : static_cast<char>(c);
      ++i;
      continue;
    }
    const std::size_t n = c >= 0xF5 ? 0 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    bool ok = n != 0 && i + n <= s.size();
    for (std::size_t k = 1; ok && k < n; ++k) ok = (at(k) & 0xC0) == 0x80;
    // Overlong forms, surrogates, code points above U+10FFFF, and U+FFFE, U+FFFF (not XML).
    if (ok && n >= 3)
      ok = !(c == 0xE0 && at(1) < 0xA0) && !(c == 0xED && at(1) >= 0xA0) &&
           !(c == 0xF0 && at(1) < 0x90) && !(c == 0xF4 && at(1) >= 0x90) &&
           !(c == 0xEF && at(1) == 0xBF && at(2) >= 0xBE);
    out += ok ? s.substr(i, n) : std::string_view("\xEF\xBF\xBD");
    i += ok ? n : 1;
  }
  return out;
}

inline double code_points(std::string_view s) {
  return static_cast<double>(
      std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

inline bool plottable(double v) { return std::isfinite(v) && v > 0; }

/// v divided by its first value (or its largest positive finite one); v itself if none.
inline std::vector<double> scaled(std::vector<double> v, bool normalize) {
  double s = v.empty() || !normalize ? 0.0 : v.front();
  if (normalize && !plottable(s))
    for (const double x : v)
      if (plottable(x)) s = std::max(s, x);
  if (s > 0)
    for (double& x : v) x /= s;
  return v;
}

/// The log axis in whole decades [lo, hi]; `any` is false when no value is plottable.
struct decades {
  int lo = -3, hi = 0;
  bool any = false;
};

inline decades decade_range(const std::vector<std::vector<double>>& all) {
  double mn = HUGE_VAL, mx = 0;
  for (const auto& v : all)
    for (const double x : v)
      if (plottable(x)) mn = std::min(mn, x), mx = std::max(mx, x);
  if (mx == 0) return {};
  const auto snap = [](double l) { return std::abs(l - std::round(l)) < 1e-9 ? std::round(l) : l; };
  decades d{static_cast<int>(std::floor(snap(std::log10(mn)))),
            static_cast<int>(std::ceil(snap(std::log10(mx)))), true};
  if (d.lo == d.hi) d.lo = d.hi - 1;
  d.lo = std::max(d.lo, d.hi - 12);
  return d;
}

/// The plot area (px) and the axes' ranges: x linear in [x0, x1], y in decades [d0, d1].
struct frame {
  double left, top, w, h, x0, x1;
  int d0, d1;
  double px(double x) const { return left + std::clamp((x - x0) / (x1 - x0), 0.0, 1.0) * w; }
  double py(double l) const {
    return top + (d1 - std::clamp(l, 1.0 * d0, 1.0 * d1)) / (d1 - d0) * h;
  }
};

/// A tick spacing of 1, 2 or 5 times a power of ten giving about `count` ticks.
inline double nice_step(double range, double count) {
  const double raw = std::max(range, 1e-12) / count;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

inline std::string text(double x, double y, std::string_view anchor, std::string_view s,
                        std::string_view extra = {}) {
  return "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" text-anchor=\"" + std::string(anchor) +
         "\"" + std::string(extra) + ">" + esc(s) + "</text>\n";
}

inline std::string line(double x1, double y1, double x2, double y2, std::string_view style) {
  return "<line x1=\"" + num(x1) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(x2) + "\" y2=\"" +
         num(y2) + "\" " + std::string(style) + "/>\n";
}

inline std::string legend_entry(double x, double y, const std::string& colour,
                                std::string_view label) {
  return line(x, y - 4, x + 18, y - 4, "stroke=\"" + colour + "\" stroke-width=\"2\"") +
         text(x + 23, y, "start", label);
}

/// The document's start: the svg element, a white background and the title (its font made
/// smaller, down to 8 px, when it would not fit the width).
inline std::string open(int w, int h, std::string_view title) {
  const std::string ws = std::to_string(w), hs = std::to_string(h);
  const double size = std::clamp((w - 16) / (0.6 * std::max(code_points(title), 1.0)), 8.0, 14.0);
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
         "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" +
         ws + "\" height=\"" + hs + "\" viewBox=\"0 0 " + ws + " " + hs +
         "\" font-family=\"sans-serif\" font-size=\"11\">\n<title>" + esc(title) +
         "</title>\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n" +
         text(w / 2.0, 22, "middle", title,
              " font-size=\"" + num(size) + "\" font-weight=\"bold\"");
}

/// Gridlines, tick labels, the frame and the axis titles. The x ticks are whole numbers, plus
/// a tick at 1, when `index`; the y axis has a line per decade (and 2..9 between, if <= 3).
/// Ticks are thinned so that their labels do not overlap.
inline std::string axes(const frame& f, bool index, std::string_view xtitle,
                        std::string_view ytitle) {
  std::string out;
  const double bottom = f.top + f.h;
  const double step =
      std::max(index ? 1.0 : 0.0, nice_step(f.x1 - f.x0, std::clamp(f.w / 90, 2.0, 8.0)));
  std::vector<double> ticks;
  if (index && step > 1 && f.px(step) - f.px(1) >= 30) ticks.push_back(1);
  for (auto k = static_cast<long long>(std::ceil(f.x0 / step - 1e-9));
       static_cast<double>(k) * step <= f.x1 + 1e-9 * step; ++k)
    ticks.push_back(static_cast<double>(k) * step);
  for (const double t : ticks) {
    char buf[32];
    const auto r = index ? std::to_chars(buf, buf + sizeof buf, std::llround(t))
                         : std::to_chars(buf, buf + sizeof buf, t, std::chars_format::general, 4);
    out += line(f.px(t), f.top, f.px(t), bottom, "stroke=\"#e4e4e4\"") +
           text(f.px(t), bottom + 15, "middle", std::string_view(buf, r.ptr));
  }
  const int every = static_cast<int>(std::ceil(14 / (f.h / (f.d1 - f.d0))));  // px per label
  for (int d = f.d0; d <= f.d1; ++d) {
    for (int m = 2; m <= 9 && d < f.d1 && f.d1 - f.d0 <= 3; ++m)
      out += line(f.left, f.py(d + std::log10(m)), f.left + f.w, f.py(d + std::log10(m)),
                  "stroke=\"#f2f2f2\"");
    out += line(f.left, f.py(d), f.left + f.w, f.py(d), "stroke=\"#d8d8d8\"");
    if (d % every == 0) out += text(f.left - 5, f.py(d) + 4, "end", "1e" + std::to_string(d));
  }
  out += "<rect x=\"" + num(f.left) + "\" y=\"" + num(f.top) + "\" width=\"" + num(f.w) +
         "\" height=\"" + num(f.h) + "\" fill=\"none\" stroke=\"#333333\"/>\n";
  out += text(f.left + f.w / 2, bottom + 32, "middle", xtitle, " font-size=\"12\"");
  return out + text(16, f.top + f.h / 2, "middle", ytitle,
                    " font-size=\"12\" transform=\"rotate(-90 16 " + num(f.top + f.h / 2) + ")\"");
}

/// Draws the plottable values of v at x_of(i, n): all of them up to max_points, else the first
/// `head`, every k-th after, and the last. Where the curve leaves the axis at the bottom it
/// is cut at the edge, and starts again where it comes back; a lone point is drawn as a dot.
template <class X>
std::string curve(const std::vector<double>& v, const frame& f, X x_of, std::size_t head,
                  std::size_t max_points, std::string_view style, const std::string& colour) {
  const std::size_t n = v.size();
  const std::size_t k =
      n <= max_points ? 1 : (n - head + max_points - head - 1) / (max_points - head);
  std::vector<std::vector<std::pair<double, double>>> runs(1);  // (x, log10 v), on the axis
  std::size_t last = n;
  double px = 0, pl = 0;  // the previous plottable point
  bool any = false;
  const auto add = [&](std::size_t i) {
    last = i;
    if (!plottable(v[i])) return;
    const double x = x_of(i, n), l = std::log10(v[i]), cut = f.d0;
    if (any && (pl < cut) != (l < cut)) {  // crosses the bottom edge
      if (l >= cut) runs.emplace_back();
      runs.back().emplace_back(px + (x - px) * (cut - pl) / (l - pl), cut);
    }
    if (l >= cut) runs.back().emplace_back(x, l);
    px = x, pl = l, any = true;
  };
  for (std::size_t i = 0; i < n; i += i < head ? 1 : k) add(i);
  if (n > 0 && last != n - 1) add(n - 1);
  std::string out;
  for (const auto& run : runs) {
    if (run.size() == 1)
      out += "<circle cx=\"" + num(f.px(run[0].first)) + "\" cy=\"" + num(f.py(run[0].second)) +
             "\" r=\"2.5\" fill=\"" + colour + "\"/>\n";
    if (run.size() < 2) continue;
    out += "<polyline fill=\"none\" stroke=\"" + colour + "\" " + std::string(style) + " points=\"";
    for (std::size_t j = 0; j < run.size(); ++j)
      out += (j > 0 ? " " : "") + num(f.px(run[j].first)) + "," + num(f.py(run[j].second));
    out += "\"/>\n";
  }
  return out;
}

/// The note in the middle of a plot with nothing to draw.
inline std::string note(const frame& f, const std::vector<std::vector<double>>& all) {
  bool zeros = false, other = false;
  for (const auto& v : all)
    for (const double x : v) (x == 0 ? zeros : other) = true;
  return text(f.left + f.w / 2, f.top + f.h / 2, "middle",
              zeros && !other ? "all singular values are 0" : "no singular values",
              " font-size=\"13\" fill=\"#555555\"");
}

}  // namespace detail

/// The SVG document of one matrix's spectrum, width x height px.
inline std::string render_spectrum_svg(const spectrum_plot& plot, int width = 640,
                                       int height = 400) {
  width = std::clamp(width, 200, 10000), height = std::clamp(height, 200, 10000);
  std::vector<std::vector<double>> all;
  std::size_t n = 0;
  for (const auto& s : plot.series) {
    all.push_back(detail::scaled(s.values, plot.normalize));
    n = std::max(n, s.values.size());
  }
  const auto d = detail::decade_range(all);
  const double x1 = std::max(2.0, static_cast<double>(n));
  const detail::frame f{68.0, 44.0, width - 88.0, height - 100.0, 1.0, x1, d.lo, d.hi};
  std::string out =
      detail::open(width, height, plot.title) +
      detail::axes(f, true, "index i", plot.normalize ? "sigma_i / sigma_1" : "singular value");
  if (!d.any) out += detail::note(f, all);
  const auto x_of = [](std::size_t i, std::size_t) { return static_cast<double>(i + 1); };
  for (std::size_t s = 0; s < all.size(); ++s)
    out += detail::curve(all[s], f, x_of, 200, 2000, "stroke-width=\"1.5\"",
                         detail::colour(static_cast<long long>(s)));
  double row = 0;  // marker labels: stacked at the top, on the side of the line facing the middle
  for (const auto& [x, label] : plot.markers) {
    if (!(x >= f.x0 && x <= f.x1)) continue;  // also skips NaN
    const double at = f.px(x), y = f.top + 13 + 13 * row;
    row = row < 7 ? row + 1 : 0;
    const bool right = at > f.left + f.w / 2;
    out += detail::line(at, f.top, at, f.top + f.h, "stroke=\"#555555\" stroke-dasharray=\"4 3\"");
    out += detail::text(right ? at - 3 : at + 3, y, right ? "end" : "start", label,
                        " font-size=\"10\" fill=\"#333333\"");
  }
  double x = f.left;  // the legend: one row under the x axis title
  for (std::size_t s = 0; s < plot.series.size(); ++s) {
    const auto& given = plot.series[s].label;
    const std::string label = given.empty() ? "series " + std::to_string(s + 1) : given;
    out +=
        detail::legend_entry(x, f.top + f.h + 48, detail::colour(static_cast<long long>(s)), label);
    x += 41 + 6.5 * detail::code_points(label);
  }
  return out + "</svg>\n";
}

/// The SVG document of an overview: every matrix's spectrum, normalized (sigma_i / sigma_1),
/// against i / min(m, n), one thin line each (at most 500 points), coloured by its group;
/// group_names[g] names group g in the legend, a column on the right.
inline std::string render_overview_svg(const std::string& title,
                                       const std::vector<overview_curve>& curves,
                                       const std::vector<std::string>& group_names, int width = 800,
                                       int height = 500) {
  width = std::clamp(width, 200, 10000), height = std::clamp(height, 200, 10000);
  std::vector<std::vector<double>> all;
  for (const auto& c : curves) all.push_back(detail::scaled(c.values, true));
  const auto d = detail::decade_range(all);
  const double legend_w = group_names.empty() ? 0 : std::min(170.0, width / 4.0);
  const detail::frame f{68.0, 44.0, width - 88.0 - legend_w, height - 88.0, 0.0, 1.0, d.lo, d.hi};
  std::string out = detail::open(width, height, title) +
                    detail::axes(f, false, "i / min(m, n)", "sigma_i / sigma_1");
  if (!d.any) out += detail::note(f, all);
  const auto x_of = [](std::size_t i, std::size_t n) {
    return static_cast<double>(i + 1) / static_cast<double>(n);
  };
  for (std::size_t c = 0; c < all.size(); ++c)
    out += detail::curve(all[c], f, x_of, 100, 500, "stroke-width=\"1\" stroke-opacity=\"0.5\"",
                         detail::colour(curves[c].group));
  const auto rows = static_cast<std::size_t>(std::max(1.0, std::floor(f.h / 16)));
  for (std::size_t g = 0; g < group_names.size() && g < rows; ++g) {
    const double x = f.left + f.w + 12, y = f.top + 10 + 16 * static_cast<double>(g);
    if (g + 1 == rows && group_names.size() > rows) {
      out += detail::text(x, y, "start", "+" + std::to_string(group_names.size() - g) + " more");
      break;
    }
    out += detail::legend_entry(x, y, detail::colour(static_cast<long long>(g)), group_names[g]);
  }
  return out + "</svg>\n";
}

}  // namespace lowrank::tools
