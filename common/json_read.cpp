#include "common/json_read.h"

#include <fmt/format.h>

#include "common/atomic_file.h"
#include "common/error.h"

namespace qlora {

namespace {

// Thrown by the parser callback to stop at the first container past the limit; never leaves this file.
struct TooDeep {};

// How many levels json_excerpt shows before writing "..." for a nested container.
constexpr int kExcerptMaxDepth = 4;

// Appends to a string that stops growing at max_chars; `cut` records that something was left out.
template <class json>
class ExcerptWriter {
 public:
  explicit ExcerptWriter(size_t max_chars) : max_(max_chars) {}

  void value(const json& j, int depth) {
    if (full()) return;
    if (j.is_array() || j.is_object()) {
      container(j, depth);
    } else if (j.is_string()) {
      const std::string& s = j.template get_ref<const std::string&>();
      const size_t room = max_ - out_.size();
      if (s.size() > room) cut_ = true;
      // replace: a cut inside a multi-byte character (or invalid UTF-8 in the file) must not throw here.
      put(json(s.substr(0, room)).dump(-1, ' ', false, json::error_handler_t::replace));
    } else {
      put(j.dump(-1, ' ', false, json::error_handler_t::replace));  // a scalar: no recursion
    }
  }

  std::string finish() { return cut_ ? out_ + "..." : out_; }

 private:
  bool full() {
    if (out_.size() >= max_) cut_ = true;
    return out_.size() >= max_;
  }

  void put(std::string_view s) {
    size_t room = max_ > out_.size() ? max_ - out_.size() : 0;
    if (s.size() <= room) {
      out_.append(s);
      return;
    }
    cut_ = true;
    // Cut at a character boundary: never before a UTF-8 continuation byte (10xxxxxx).
    while (room > 0 && (static_cast<unsigned char>(s[room]) & 0xC0) == 0x80) --room;
    out_.append(s.substr(0, room));
    max_ = out_.size();  // nothing more fits
  }

  void container(const json& j, int depth) {
    const bool is_object = j.is_object();
    put(is_object ? "{" : "[");
    if (!j.empty() && depth >= kExcerptMaxDepth) {
      put("...");
    } else {
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (full()) return;
        if (!first) put(",");
        first = false;
        if (is_object) put(json(it.key()).dump(-1, ' ', false, json::error_handler_t::replace) + ":");
        value(it.value(), depth + 1);
      }
    }
    put(is_object ? "}" : "]");
  }

  size_t max_;
  std::string out_;
  bool cut_ = false;
};

template <class json>
std::optional<json> try_parse(std::string_view text, std::string* why, int max_depth) {
  // The callback sees every container as it opens, with the number of containers around it: the limit is enforced
  // before anything deeper is built (and before any recursive walk could meet it).
  const typename json::parser_callback_t limit_depth = [max_depth](int depth, typename json::parse_event_t event,
                                                                   json& /*parsed*/) {
    const bool opens = event == json::parse_event_t::object_start || event == json::parse_event_t::array_start;
    if (opens && depth >= max_depth) throw TooDeep{};
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit_depth);
  } catch (const TooDeep&) {
    *why = fmt::format("JSON nested deeper than {} levels", max_depth);
  } catch (const typename json::exception& e) {
    *why = std::string("not valid JSON: ") + e.what();
  }
  return std::nullopt;
}

template <class json>
json parse_or_throw(std::string_view text, const std::string& source, int max_depth) {
  std::string why;
  std::optional<json> j = try_parse<json>(text, &why, max_depth);
  if (!j) {
    throw_file_error(source, why,
                     why.rfind("JSON nested", 0) == 0
                         ? "real files of this kind nest a few levels; this one is corrupt or was made to crash readers"
                         : "check that the file is complete and was not truncated or edited by hand");
  }
  return std::move(*j);
}

}  // namespace

using json = nlohmann::json;

std::optional<json> try_parse_json(std::string_view text, std::string* why, int max_depth) {
  return try_parse<json>(text, why, max_depth);
}

json parse_json(std::string_view text, const std::string& source, int max_depth) {
  return parse_or_throw<json>(text, source, max_depth);
}

nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& source, int max_depth) {
  return parse_or_throw<nlohmann::ordered_json>(text, source, max_depth);
}

json read_json_file(const std::filesystem::path& path, int max_depth) {
  return parse_json(read_file(path), path.string(), max_depth);
}

int64_t json_int64(const json& v) {
  if (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(v.get<uint64_t>());
  }
  if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<int64_t>();
  throw json::type_error::create(302, "expected an integer, got " + json_excerpt(v), &v);
}

std::string json_excerpt(const json& j, size_t max_chars) {
  ExcerptWriter<json> w(max_chars);
  w.value(j, /*depth=*/0);
  return w.finish();
}

std::string json_excerpt(const nlohmann::ordered_json& j, size_t max_chars) {
  ExcerptWriter<nlohmann::ordered_json> w(max_chars);
  w.value(j, /*depth=*/0);
  return w.finish();
}

}  // namespace qlora
