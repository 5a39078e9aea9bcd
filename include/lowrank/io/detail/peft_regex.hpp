#pragma once
/// @file
/// The regular expressions of PEFT's rank_pattern / alpha_pattern keys (internal): a parser
/// of the subset of Python's `re` syntax that such keys use, compiled to a Thompson NFA and
/// run as a Pike VM (no backtracking: time O(pattern x text), memory O(pattern); no
/// recursion over the text). Replaces std::regex, whose backtracking takes exponential time
/// on nested quantifiers ("(a*)*b") and overflows the stack on long names.
///
/// Supported (with Python's meaning; the subset real adapters use):
/// - literal characters (UTF-8 text is matched by code point), `.` (any character but
///   '\n');
/// - character classes `[...]`: characters, ranges `a-z`, negation `[^...]`, a leading `]`
///   or a leading or trailing `-` as a character, and the escapes below;
/// - escapes: `\d \D \w \W \s \S` (ASCII classes, as Python's re.ASCII: a non-ASCII
///   character is never \d, \w or \s), `\n \t \r \f \v \a`, `\xhh`, and `\` before any
///   character that is not an ASCII letter or digit (`\.`, `\\`, `\(` ...);
/// - groups `(...)`, `(?:...)` and `(?P<name>...)`, alternation `|`;
/// - quantifiers `* + ? {m} {m,} {,n} {m,n}` (m, n <= 1000), greedy or lazy (`*?`: the same
///   for a yes/no match); a `{` that does not start one is a character, as in Python;
/// - anchors `^` (the start) and `$` (the end, or before a '\n' that ends the text).
/// Anything else is refused, never approximated: backreferences (`\1`, `(?P=name)`),
/// lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`), inline flags, comments, atomic groups and
/// conditionals, possessive quantifiers, `\b \B \A \Z`, octal, `\u \U \N` escapes. Limits:
/// groups nest at most 100 deep and a compiled key has at most 10000 instructions.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowrank::io::detail {

/// A key that is not a regular expression (`unsupported` false), or uses syntax outside the
/// subset (true): what, and where (a character index in the key).
struct peft_regex_error {
  std::string what;
  std::size_t position = 0;
  bool unsupported = false;
};

/// The code points of UTF-8 text; a byte that is not part of valid UTF-8 becomes
/// U+DC80 + byte (as Python's surrogateescape), so that any bytes compare consistently.
inline std::u32string peft_code_points(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const auto b = static_cast<unsigned char>(text[i]);
    const std::size_t length = b < 0x80         ? 1
                               : (b >> 5) == 6  ? 2
                               : (b >> 4) == 14 ? 3
                               : (b >> 3) == 30 ? 4
                                                : 0;
    char32_t c = length == 1 ? b : length == 2 ? (b & 0x1f) : length == 3 ? (b & 0x0f) : (b & 0x07);
    bool valid = length > 0 && i + length <= text.size();
    for (std::size_t k = 1; valid && k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      valid = (next >> 6) == 2;
      c = (c << 6) | (next & 0x3f);
    }
    constexpr char32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
    valid = valid && c >= smallest[length] && c <= 0x10ffff && (c < 0xd800 || c > 0xdfff);
    if (valid) {
      out += c;
      i += length;
    } else {
      out += static_cast<char32_t>(0xdc80 + b);
      ++i;
    }
  }
  return out;
}

/// A compiled key, matched as PEFT's get_pattern_key does: re.match(rf"(.*\.)?({key})$", name).
class peft_regex {
 public:
  static constexpr unsigned max_repeat = 1000;
  static constexpr std::size_t max_program = 10000;
  static constexpr int max_nesting = 100;

  /// Compiles `key`. @throws peft_regex_error
  explicit peft_regex(std::string_view key) : key_(peft_code_points(key)) {
    node k = parse_alternation(0);
    if (pos_ < key_.size()) error("unbalanced parenthesis", pos_);
    // (.*\.)? (key) $, then match.
    node any_star{kind::repeat, 0, 0, infinite, {node{kind::any}}};
    node prefix{kind::repeat, 0, 0, 1, {node{kind::concat, 0, 0, 0, {any_star, literal('.')}}}};
    emit(node{kind::concat, 0, 0, 0, {prefix, std::move(k), node{kind::line_end}}});
    push({op::match});
  }

  /// Whether `name` matches (see the class comment).
  /// @throws peft_regex_error (unsupported) when the key has \d, \w or \s and `name` a
  /// non-ASCII character, which Python's Unicode classes may hold (lowrank's are ASCII).
  [[nodiscard]] bool matches(std::string_view name) const {
    const std::u32string text = peft_code_points(name);
    if (ascii_classes_ &&
        std::any_of(text.begin(), text.end(), [](char32_t c) { return c >= 0x80; })) {
      error("\\d, \\w or \\s (ASCII here, Unicode in Python) with a non-ASCII module name", 0,
            true);
    }
    std::vector<std::uint32_t> current, next, stack;
    std::vector<std::size_t> seen(program_.size(), std::numeric_limits<std::size_t>::max());
    // The threads at position `at`: every instruction reachable from `pc` without consuming
    // a character, each once per position. True when one of them is the match.
    const auto add = [&](std::vector<std::uint32_t>& list, std::uint32_t pc, std::size_t at) {
      bool matched = false;
      stack.assign(1, pc);
      while (!stack.empty()) {
        const std::uint32_t p = stack.back();
        stack.pop_back();
        if (seen[p] == at) continue;
        seen[p] = at;
        const instruction& in = program_[p];
        switch (in.code) {
          case op::jump:
            stack.push_back(in.x);
            break;
          case op::split:
            stack.push_back(in.y);
            stack.push_back(in.x);
            break;
          case op::line_start:
            if (at == 0) stack.push_back(p + 1);
            break;
          case op::line_end:
            if (at == text.size() || (at + 1 == text.size() && text[at] == U'\n')) {
              stack.push_back(p + 1);
            }
            break;
          case op::match:
            matched = true;
            break;
          default:
            list.push_back(p);
        }
      }
      return matched;
    };
    if (add(current, 0, 0)) return true;
    for (std::size_t at = 0; at < text.size() && !current.empty(); ++at) {
      const char32_t c = text[at];
      next.clear();
      for (const std::uint32_t p : current) {
        if (consumes(program_[p], c) && add(next, p + 1, at + 1)) return true;
      }
      std::swap(current, next);
    }
    return false;
  }

 private:
  static constexpr unsigned infinite = std::numeric_limits<unsigned>::max();

  enum class op : std::uint8_t { literal, any, set, split, jump, line_start, line_end, match };
  struct instruction {
    op code;
    std::uint32_t x = 0;  // literal: the code point; set: its index; split, jump: a target
    std::uint32_t y = 0;  // split: the other target
  };
  struct char_set {
    std::vector<std::pair<char32_t, char32_t>> ranges;
    bool negated = false;
  };

  enum class kind { empty, literal, any, set, concat, alternate, repeat, line_start, line_end };
  struct node {
    kind k = kind::empty;
    char32_t value = 0;  // literal: the code point; set: its index
    unsigned min = 0;    // repeat
    unsigned max = 0;
    std::vector<node> children{};
  };

  static node literal(char32_t c) { return node{kind::literal, c, 0, 0, {}}; }

  [[noreturn]] static void error(std::string what, std::size_t at, bool unsupported = false) {
    throw peft_regex_error{std::move(what), at, unsupported};
  }

  [[nodiscard]] bool at_end() const { return pos_ >= key_.size(); }
  [[nodiscard]] char32_t peek(std::size_t ahead = 0) const {
    return pos_ + ahead < key_.size() ? key_[pos_ + ahead] : U'\0';
  }

  node parse_alternation(int depth) {
    if (depth > max_nesting) {
      error("groups nested more than " + std::to_string(max_nesting) + " deep", pos_, true);
    }
    node out{kind::alternate};
    out.children.push_back(parse_concat(depth));
    while (!at_end() && peek() == U'|') {
      ++pos_;
      out.children.push_back(parse_concat(depth));
    }
    return out.children.size() == 1 ? std::move(out.children.front()) : out;
  }

  node parse_concat(int depth) {
    node out{kind::concat};
    while (!at_end() && peek() != U'|' && peek() != U')') {
      node atom = parse_atom(depth);
      bool repeated = false;
      while (!at_end()) {
        unsigned min = 0;
        unsigned max = 0;
        const std::size_t at = pos_;
        if (!parse_quantifier(min, max)) break;
        if (repeated) error("multiple repeat", at);
        if (atom.k == kind::line_start || atom.k == kind::line_end) error("nothing to repeat", at);
        if (!at_end() && peek() == U'?') {
          ++pos_;  // lazy: the same set of matches
        } else if (!at_end() && peek() == U'+') {
          error("a possessive quantifier", pos_, true);
        }
        atom = node{kind::repeat, 0, min, max, {std::move(atom)}};
        repeated = true;
      }
      out.children.push_back(std::move(atom));
    }
    return out;
  }

  // A quantifier at pos_: consumed, with its bounds, or false (pos_ unchanged).
  bool parse_quantifier(unsigned& min, unsigned& max) {
    const char32_t c = peek();
    if (c == U'*' || c == U'+' || c == U'?') {
      ++pos_;
      min = c == U'+' ? 1 : 0;
      max = c == U'?' ? 1 : infinite;
      return true;
    }
    if (c != U'{') return false;
    // {m}, {m,}, {,n}, {m,n}, {,}; anything else makes '{' a character (Python's rule).
    std::size_t p = pos_ + 1;
    const auto number = [&](bool& present) {
      unsigned long value = 0;
      present = false;
      while (p < key_.size() && key_[p] >= U'0' && key_[p] <= U'9') {
        value = std::min<unsigned long>(value * 10 + (key_[p] - U'0'), 1UL << 31);
        present = true;
        ++p;
      }
      return value;
    };
    bool has_min = false;
    bool has_max = false;
    const unsigned long low = number(has_min);
    unsigned long high = low;
    bool comma = false;
    if (p < key_.size() && key_[p] == U',') {
      comma = true;
      ++p;
      high = number(has_max);
    }
    if (p >= key_.size() || key_[p] != U'}' || (!has_min && !comma)) return false;
    const std::size_t at = pos_;
    if ((has_min && low > max_repeat) || (has_max && high > max_repeat)) {
      error("a repeat count over " + std::to_string(max_repeat), at, true);
    }
    if (has_max && low > high) error("min repeat greater than max repeat", at);
    pos_ = p + 1;
    min = static_cast<unsigned>(low);
    max = comma && !has_max ? infinite : static_cast<unsigned>(high);
    return true;
  }

  node parse_atom(int depth) {
    const std::size_t at = pos_;
    const char32_t c = key_[pos_++];
    switch (c) {
      case U'*':
      case U'+':
      case U'?':
        error("nothing to repeat", at);
      case U'{': {
        --pos_;
        unsigned min = 0;
        unsigned max = 0;
        if (parse_quantifier(min, max)) error("nothing to repeat", at);
        ++pos_;
        return literal(c);
      }
      case U'.':
        return node{kind::any};
      case U'^':
        return node{kind::line_start};
      case U'$':
        return node{kind::line_end};
      case U'[':
        return parse_set(at);
      case U'\\':
        return parse_escape(at, false);
      case U'(':
        return parse_group(at, depth);
      default:
        return literal(c);
    }
  }

  node parse_group(std::size_t at, int depth) {
    if (peek() == U'?') {
      const char32_t c = peek(1);
      const auto shown = [](char32_t ch) {
        return std::string(1, ch >= 0x20 && ch < 0x7f ? static_cast<char>(ch) : '?');
      };
      if (pos_ + 1 >= key_.size()) error("unexpected end of pattern", pos_ + 1);
      if (c == U':') {
        pos_ += 2;
      } else if (c == U'P' && peek(2) == U'<') {
        pos_ += 3;
        const std::size_t name = pos_;
        const auto word = [](char32_t ch) {
          return ch == U'_' || (ch >= U'0' && ch <= U'9') || (ch >= U'a' && ch <= U'z') ||
                 (ch >= U'A' && ch <= U'Z') || ch >= 0x80;
        };
        while (!at_end() && word(peek())) ++pos_;
        if (at_end() || peek() != U'>') error("missing >, unterminated name", name);
        if (pos_ == name || key_[name] <= U'9') error("bad character in group name", name);
        if (!names_.insert(key_.substr(name, pos_ - name)).second) {
          error("redefinition of group name", name);
        }
        ++pos_;
      } else if (c == U'P' && peek(2) == U'=') {
        error("a backreference (?P=...)", at, true);
      } else if (c == U'=' || c == U'!' || (c == U'<' && (peek(2) == U'=' || peek(2) == U'!'))) {
        error("a lookaround assertion", at, true);
      } else if (c == U'#' || c == U'>' || c == U'(' || c == U'-' ||
                 std::u32string_view(U"aiLmsux").find(c) != std::u32string_view::npos) {
        error("the group extension (?" + shown(c) +
                  " (inline flags, a comment, an atomic group or a conditional)",
              at, true);
      } else {
        error("unknown extension ?" + shown(c) + (c == U'P' ? shown(peek(2)) : ""), at);
      }
    }
    node inside = parse_alternation(depth + 1);
    if (at_end() || peek() != U')') error("missing ), unterminated subpattern", at);
    ++pos_;
    return inside;
  }

  // An escape after '\' at `at` (pos_ is after the '\'), in a set or not: a literal or a set.
  node parse_escape(std::size_t at, bool in_set) {
    if (at_end()) error("bad escape (end of pattern)", at);
    const char32_t c = key_[pos_++];
    switch (c) {
      case U'd':
      case U'D':
        return class_escape({{U'0', U'9'}}, c == U'D');
      case U'w':
      case U'W':
        return class_escape({{U'0', U'9'}, {U'A', U'Z'}, {U'_', U'_'}, {U'a', U'z'}}, c == U'W');
      case U's':
      case U'S':
        return class_escape({{U'\t', U'\r'}, {U' ', U' '}}, c == U'S');
      case U'n':
        return literal(U'\n');
      case U't':
        return literal(U'\t');
      case U'r':
        return literal(U'\r');
      case U'f':
        return literal(U'\f');
      case U'v':
        return literal(U'\v');
      case U'a':
        return literal(U'\a');
      case U'x': {
        char32_t value = 0;
        for (int k = 0; k < 2; ++k) {
          const char32_t h = peek();
          const int digit = h >= U'0' && h <= U'9'   ? static_cast<int>(h - U'0')
                            : h >= U'a' && h <= U'f' ? static_cast<int>(h - U'a' + 10)
                            : h >= U'A' && h <= U'F' ? static_cast<int>(h - U'A' + 10)
                                                     : -1;
          if (at_end() || digit < 0) error("incomplete escape \\x", at);
          value = value * 16 + static_cast<char32_t>(digit);
          ++pos_;
        }
        return literal(value);
      }
      case U'b':
        if (in_set) return literal(U'\b');
        error("the assertion \\b", at, true);
      default:
        break;
    }
    if (c >= U'0' && c <= U'9') {
      error(c == U'0' || in_set ? "an octal escape" : "a backreference", at, true);
    }
    if ((c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z')) {
      if (c == U'A' || c == U'Z' || c == U'B')
        error("an assertion \\" + std::string(1, static_cast<char>(c)), at, true);
      if (c == U'u' || c == U'U' || c == U'N')
        error("the escape \\" + std::string(1, static_cast<char>(c)), at, true);
      error("bad escape \\" + std::string(1, static_cast<char>(c)), at);
    }
    return literal(c);
  }

  node class_escape(std::vector<std::pair<char32_t, char32_t>> ranges, bool negated) {
    ascii_classes_ = true;
    sets_.push_back({std::move(ranges), negated});
    return node{kind::set, static_cast<char32_t>(sets_.size() - 1), 0, 0, {}};
  }

  // A set after '[' at `at`, by the rules of Python's parser: a ']' first is a character; an
  // item then '-' then ']' is the item and '-'; a range joins two characters, not classes.
  node parse_set(std::size_t at) {
    char_set set;
    if (!at_end() && peek() == U'^') {
      set.negated = true;
      ++pos_;
    }
    // The next item: true and a character in `c`, or false after adding a class escape.
    const auto item = [&](char32_t& c) {
      const std::size_t where = pos_;
      c = key_[pos_++];
      if (c != U'\\') return true;
      node escaped = parse_escape(where, true);
      if (escaped.k == kind::literal) {
        c = escaped.value;
        return true;
      }
      append_ranges(set, sets_[escaped.value]);
      sets_.pop_back();
      return false;
    };
    for (bool first = true;; first = false) {
      if (at_end()) error("unterminated character set", at);
      if (peek() == U']' && !first) {
        ++pos_;
        break;
      }
      const std::size_t item_at = pos_;
      char32_t low = 0;
      const bool low_is_char = item(low);
      if (at_end() || peek() != U'-') {
        if (low_is_char) set.ranges.emplace_back(low, low);
        continue;
      }
      ++pos_;
      if (at_end()) error("unterminated character set", at);
      if (peek() == U']') {
        if (low_is_char) set.ranges.emplace_back(low, low);
        set.ranges.emplace_back(U'-', U'-');
        ++pos_;
        break;
      }
      char32_t high = 0;
      if (!item(high) || !low_is_char || high < low) error("bad character range", item_at);
      set.ranges.emplace_back(low, high);
    }
    sets_.push_back(std::move(set));
    return node{kind::set, static_cast<char32_t>(sets_.size() - 1), 0, 0, {}};
  }

  // Adds the characters of `inner` (a class escape, maybe negated) to `set`.
  static void append_ranges(char_set& set, const char_set& inner) {
    if (!inner.negated) {
      set.ranges.insert(set.ranges.end(), inner.ranges.begin(), inner.ranges.end());
      return;
    }
    char32_t next = 0;  // the complement of sorted, disjoint ranges
    for (const auto& [low, high] : inner.ranges) {
      if (low > next) set.ranges.emplace_back(next, low - 1);
      next = high + 1;
    }
    set.ranges.emplace_back(next, std::numeric_limits<char32_t>::max());
  }

  [[nodiscard]] bool consumes(const instruction& in, char32_t c) const {
    switch (in.code) {
      case op::literal:
        return in.x == c;
      case op::any:
        return c != U'\n';
      case op::set: {
        const char_set& set = sets_[in.x];
        const bool in_set = std::any_of(set.ranges.begin(), set.ranges.end(), [&](const auto& r) {
          return r.first <= c && c <= r.second;
        });
        return in_set != set.negated;
      }
      default:
        return false;
    }
  }

  std::uint32_t push(instruction in) {
    if (program_.size() >= max_program) {
      error("more than " + std::to_string(max_program) + " instructions once compiled", 0, true);
    }
    program_.push_back(in);
    return static_cast<std::uint32_t>(program_.size() - 1);
  }

  void emit(const node& n) {
    switch (n.k) {
      case kind::empty:
        return;
      case kind::literal:
        push({op::literal, n.value});
        return;
      case kind::any:
        push({op::any});
        return;
      case kind::set:
        push({op::set, n.value});
        return;
      case kind::line_start:
        push({op::line_start});
        return;
      case kind::line_end:
        push({op::line_end});
        return;
      case kind::concat:
        for (const node& child : n.children) emit(child);
        return;
      case kind::alternate: {
        std::vector<std::uint32_t> exits;
        for (std::size_t k = 0; k + 1 < n.children.size(); ++k) {
          const std::uint32_t split = push({op::split});
          program_[split].x = split + 1;
          emit(n.children[k]);
          exits.push_back(push({op::jump}));
          program_[split].y = static_cast<std::uint32_t>(program_.size());
        }
        emit(n.children.back());
        for (const std::uint32_t exit : exits) {
          program_[exit].x = static_cast<std::uint32_t>(program_.size());
        }
        return;
      }
      case kind::repeat: {
        const node& child = n.children.front();
        for (unsigned k = 0; k < n.min; ++k) emit(child);
        if (n.max == infinite) {  // loop: split body, out; body; jump loop
          const std::uint32_t loop = push({op::split});
          program_[loop].x = loop + 1;
          emit(child);
          push({op::jump, loop});
          program_[loop].y = static_cast<std::uint32_t>(program_.size());
          return;
        }
        std::vector<std::uint32_t> exits;  // (child (child ...)?)?
        for (unsigned k = n.min; k < n.max; ++k) {
          const std::uint32_t split = push({op::split});
          program_[split].x = split + 1;
          exits.push_back(split);
          emit(child);
        }
        for (const std::uint32_t split : exits) {
          program_[split].y = static_cast<std::uint32_t>(program_.size());
        }
        return;
      }
    }
  }

  std::u32string key_;
  std::size_t pos_ = 0;
  std::vector<char_set> sets_;
  std::set<std::u32string> names_;  // of (?P<name>...) groups
  std::vector<instruction> program_;
  bool ascii_classes_ = false;  // the key has \d, \w or \s (or their negations)
};

}  // namespace lowrank::io::detail
