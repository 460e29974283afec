// A text table printed row by row as results arrive (a slow row must not hold back the
// ones before it), with fixed column widths chosen up front.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace rmsnorm::cli {

class TextTable {
 public:
  struct Column {
    std::string title;
    int width = 0;      // at least the title's length
    bool left = false;  // text columns align left, numbers right
  };
  TextTable(std::ostream& os, std::vector<Column> columns);
  void print_header();
  void print_row(const std::vector<std::string>& cells);  // flushes

 private:
  std::ostream& os_;
  std::vector<Column> columns_;
};

// printf-style formatting into a std::string.
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace rmsnorm::cli
