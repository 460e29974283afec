#include "report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

namespace rmsnorm::cli {
namespace {

std::ofstream open_for_writing(const std::string& path) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write '" + path + "'");
  return f;
}

void finish(std::ofstream& f, const std::string& path) {
  f.flush();
  if (!f) throw std::runtime_error("error while writing '" + path + "'");
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// JSON has no NaN or infinity: a figure that could not be measured is null.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string xml_text(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A "nice" axis step (1, 2 or 5 times a power of ten) giving about `ticks` ticks.
double nice_step(double range, int ticks) {
  const double raw = range / ticks;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * p) return m * p;
  return 10 * p;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

void write_json(const std::string& path, const ReportInfo& info, const std::vector<Record>& records) {
  std::ofstream f = open_for_writing(path);
  f << "{\n  \"device\": " << json_string(info.device) << ",\n  \"date\": " << json_string(info.date)
    << ",\n  \"commit\": " << json_string(info.commit) << ",\n  \"op\": " << json_string(info.op)
    << ",\n  \"dtype\": " << json_string(info.dtype) << ",\n  \"byte_model\": "
    << json_string(info.op == "backward" ? "3*M*N*s (read x + read dy + write dx; weight, dw and rstd ignored)"
                                         : "2*M*N*s (read x + write y; weight ignored)")
    << ",\n  \"cpu_figures\": " << (info.cpu_figures ? "true" : "false") << ",\n  \"records\": [";
  for (std::size_t i = 0; i < records.size(); ++i) {
    const Record& r = records[i];
    f << (i ? ",\n" : "\n") << "    {\"op\": " << json_string(r.op) << ", \"dtype\": " << json_string(r.dtype)
      << ", \"rows\": " << r.rows << ", \"cols\": " << r.cols << ", \"impl\": " << json_string(r.impl)
      << ", \"mode\": " << json_string(r.mode) << ", \"suite\": " << json_string(r.suite)
      << ", \"strategy\": " << json_string(r.strategy) << ", \"gbps\": " << json_number(r.gbps)
      << ", \"us\": " << json_number(r.us) << ", \"bytes\": " << fmt("%.0f", r.bytes) << ", \"sets\": " << r.sets
      << ", \"calls\": " << r.calls << ", \"reps\": " << r.reps << ", \"device\": " << json_string(r.device)
      << ", \"commit\": " << json_string(r.commit) << ", \"date\": " << json_string(r.date) << "}";
  }
  f << (records.empty() ? "]\n}\n" : "\n  ]\n}\n");
  finish(f, path);
}

void write_csv(const std::string& path, const std::vector<Record>& records) {
  std::ofstream f = open_for_writing(path);
  f << "op,dtype,rows,cols,impl,mode,suite,strategy,gbps,us,bytes,sets,calls,reps,device,commit,date\n";
  for (const Record& r : records)
    f << csv_field(r.op) << ',' << csv_field(r.dtype) << ',' << r.rows << ',' << r.cols << ',' << csv_field(r.impl)
      << ',' << csv_field(r.mode) << ',' << csv_field(r.suite) << ',' << csv_field(r.strategy) << ','
      << (std::isfinite(r.gbps) ? fmt("%.6g", r.gbps) : "") << ',' << (std::isfinite(r.us) ? fmt("%.6g", r.us) : "")
      << ',' << fmt("%.0f", r.bytes) << ',' << r.sets << ',' << r.calls << ',' << r.reps << ',' << csv_field(r.device)
      << ',' << csv_field(r.commit) << ',' << csv_field(r.date) << '\n';
  finish(f, path);
}

void write_svg(const std::string& path, const ReportInfo& info, const std::vector<Record>& records) {
  // Throughput records only: decode figures are latencies, not bandwidths.
  std::vector<const Record*> pts;
  std::vector<std::string> suites;
  for (const Record& r : records)
    if (r.suite != "decode" && r.mode != "plain" && std::isfinite(r.gbps) && r.gbps > 0) {
      pts.push_back(&r);
      if (std::find(suites.begin(), suites.end(), r.suite) == suites.end()) suites.push_back(r.suite);
    }
  const bool by_suite = suites.size() > 1;
  struct Series {
    std::vector<const Record*> points;
    std::string color, dash;
  };
  std::map<std::string, Series> series;
  std::vector<std::string> order;  // legend order: first appearance
  std::vector<std::string> impls;
  for (const Record* r : pts) {
    const std::string key = by_suite ? r->impl + " (" + r->suite + ")" : r->impl;
    if (!series.count(key)) {
      order.push_back(key);
      // One colour per implementation, one dash pattern per suite: the fused line of
      // every suite reads as one family.
      static const char* impl_colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"};
      static const char* dashes[] = {"", "8 4", "2 3", "10 3 2 3", "4 4"};
      auto at = std::find(impls.begin(), impls.end(), r->impl);
      if (at == impls.end()) at = impls.insert(impls.end(), r->impl);
      const std::size_t ci = static_cast<std::size_t>(at - impls.begin()) % 5;
      const std::size_t di =
          static_cast<std::size_t>(std::find(suites.begin(), suites.end(), r->suite) - suites.begin()) % 5;
      series[key].color = r->impl == "fused"     ? "#1f77b4"
                          : r->impl == "unfused" ? "#d62728"
                          : r->impl == "copy"    ? "#7f7f7f"
                                                 : impl_colors[ci];
      series[key].dash = dashes[di];
    }
    series[key].points.push_back(r);
  }

  const double W = 860, H = 520, left = 80, right = 190, top = 50, bottom = 70;
  const double pw = W - left - right, ph = H - top - bottom;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << ' ' << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  const std::string title =
      "rmsnorm " + info.op + " " + info.dtype + " on " + info.device + (info.cpu_figures ? " (CPU figures)" : "");
  s << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">" << xml_text(title)
    << "</text>\n<text x=\"" << W / 2 << "\" y=\"38\" text-anchor=\"middle\" fill=\"#555\">"
    << xml_text(info.date + ", commit " + info.commit) << "</text>\n";

  if (pts.empty()) {
    s << "<text x=\"" << W / 2 << "\" y=\"" << H / 2
      << "\" text-anchor=\"middle\">no throughput records to plot</text>\n</svg>\n";
  } else {
    double nmin = 1e300, nmax = 0, gmax = 0;
    for (const Record* r : pts) {
      nmin = std::min(nmin, static_cast<double>(r->cols));
      nmax = std::max(nmax, static_cast<double>(r->cols));
      gmax = std::max(gmax, r->gbps);
    }
    const bool log_x = nmax / nmin > 8;
    const double x0 = log_x ? std::log2(nmin) : nmin, x1 = log_x ? std::log2(nmax) : nmax;
    const auto px = [&](double n) {
      const double v = log_x ? std::log2(n) : n;
      return left + (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5) * pw;
    };
    const double ystep = nice_step(gmax, 6);
    const double ymax = std::ceil(gmax * 1.05 / ystep) * ystep;
    const auto py = [&](double g) { return top + ph - g / ymax * ph; };

    // Axes, grid and ticks.
    s << "<g stroke=\"#ddd\">\n";
    for (double g = 0; g <= ymax + ystep / 2; g += ystep)
      s << "<line x1=\"" << left << "\" x2=\"" << left + pw << "\" y1=\"" << py(g) << "\" y2=\"" << py(g) << "\"/>\n";
    s << "</g>\n";
    for (double g = 0; g <= ymax + ystep / 2; g += ystep)
      s << "<text x=\"" << left - 6 << "\" y=\"" << py(g) + 4 << "\" text-anchor=\"end\">" << fmt("%g", g)
        << "</text>\n";
    std::vector<double> xticks;
    for (const Record* r : pts)
      if (std::find(xticks.begin(), xticks.end(), static_cast<double>(r->cols)) == xticks.end())
        xticks.push_back(static_cast<double>(r->cols));
    if (xticks.size() > 12 && log_x) {  // too many to label: powers of two instead
      xticks.clear();
      for (double p = std::ceil(x0); p <= x1; ++p) xticks.push_back(std::exp2(p));
    }
    std::sort(xticks.begin(), xticks.end());
    double last_label = -1e9;
    for (double n : xticks) {
      s << "<line x1=\"" << px(n) << "\" x2=\"" << px(n) << "\" y1=\"" << top + ph << "\" y2=\"" << top + ph + 5
        << "\" stroke=\"black\"/>\n";
      // 16K, 32K, ... 256K: long labels of neighbouring powers of two would collide.
      const bool kilo = n >= 16384 && std::fmod(n, 1024.0) == 0;
      const std::string label = kilo ? fmt("%.0fK", n / 1024) : fmt("%.0f", n);
      if (px(n) - last_label < 7.5 * static_cast<double>(label.size()) + 6) continue;  // would overlap
      last_label = px(n);
      s << "<text x=\"" << px(n) << "\" y=\"" << top + ph + 18 << "\" text-anchor=\"middle\">" << label << "</text>\n";
    }
    s << "<line x1=\"" << left << "\" y1=\"" << top + ph << "\" x2=\"" << left + pw << "\" y2=\"" << top + ph
      << "\" stroke=\"black\"/>\n<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\""
      << top + ph << "\" stroke=\"black\"/>\n";
    s << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 25 << "\" text-anchor=\"middle\">"
      << (log_x ? "N, elements per row (log2 scale)" : "N, elements per row") << "</text>\n";
    s << "<text transform=\"translate(22," << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">GB/s ("
      << (info.op == "backward" ? "3" : "2") << "*M*N*s bytes / time)</text>\n";

    // One polyline per series, points sorted by N, and a legend.
    for (std::size_t i = 0; i < order.size(); ++i) {
      std::vector<const Record*>& v = series[order[i]].points;
      std::stable_sort(v.begin(), v.end(), [](const Record* a, const Record* b) { return a->cols < b->cols; });
      const std::string& color = series[order[i]].color;
      const std::string& dash = series[order[i]].dash;
      const std::string dash_attr = dash.empty() ? "" : " stroke-dasharray=\"" + dash + "\"";
      s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\"" << dash_attr << " points=\"";
      for (const Record* r : v)
        s << fmt("%.1f", px(static_cast<double>(r->cols))) << ',' << fmt("%.1f", py(r->gbps)) << ' ';
      s << "\"/>\n";
      for (const Record* r : v)
        s << "<circle cx=\"" << fmt("%.1f", px(static_cast<double>(r->cols))) << "\" cy=\"" << fmt("%.1f", py(r->gbps))
          << "\" r=\"3\" fill=\"" << color << "\"><title>" << r->rows << " x " << r->cols << ": "
          << fmt("%.1f", r->gbps) << " GB/s</title></circle>\n";
      const double ly = top + 10 + 20 * static_cast<double>(i);
      s << "<line x1=\"" << left + pw + 15 << "\" x2=\"" << left + pw + 40 << "\" y1=\"" << ly << "\" y2=\"" << ly
        << "\" stroke=\"" << color << "\" stroke-width=\"2\"" << dash_attr << "/>\n<text x=\"" << left + pw + 46
        << "\" y=\"" << ly + 4 << "\">" << xml_text(order[i]) << "</text>\n";
    }
    s << "</svg>\n";
  }
  std::ofstream f = open_for_writing(path);
  f << s.str();
  finish(f, path);
}

}  // namespace rmsnorm::cli
