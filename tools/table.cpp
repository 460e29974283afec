#include "table.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>

namespace rmsnorm::cli {

TextTable::TextTable(std::ostream& os, std::vector<Column> columns) : os_(os), columns_(std::move(columns)) {
  for (Column& c : columns_) c.width = std::max<int>(c.width, static_cast<int>(c.title.size()));
}

void TextTable::print_header() {
  std::vector<std::string> titles;
  for (const Column& c : columns_) titles.push_back(c.title);
  print_row(titles);
}

void TextTable::print_row(const std::vector<std::string>& cells) {
  std::string line;
  for (std::size_t i = 0; i < columns_.size(); ++i) {
    const std::string cell = i < cells.size() ? cells[i] : "";
    const std::size_t w = static_cast<std::size_t>(columns_[i].width);
    const std::string pad(cell.size() < w ? w - cell.size() : 0, ' ');
    if (i) line += "  ";
    line += columns_[i].left ? cell + pad : pad + cell;
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  os_ << line << '\n';
  os_.flush();
}

std::string format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string out(n > 0 ? static_cast<std::size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, args);
  va_end(args);
  return out;
}

}  // namespace rmsnorm::cli
