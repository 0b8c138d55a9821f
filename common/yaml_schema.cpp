#include "common/yaml_schema.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "common/error.h"

namespace qlora {

namespace {

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string join_list(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// YamlContext

YamlContext::YamlContext(std::string file, const std::vector<std::string>& overrides) : file_(std::move(file)) {
  for (const auto& spec : overrides) overrides_[spec.substr(0, spec.find('='))] = spec;
}

void YamlContext::add_key(const std::string& path) {
  std::string section;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '.');) {
    auto& keys = keys_[section];
    if (!contains(keys, part)) keys.push_back(part);
    section = join_path(section, part);
  }
}

const std::vector<std::string>& YamlContext::keys_of(const std::string& section) const {
  static const std::vector<std::string> kNone;
  const auto it = keys_.find(section);
  return it == keys_.end() ? kNone : it->second;
}

std::string YamlContext::override_for(const std::string& key) const {
  for (const auto& [k, spec] : overrides_) {
    if (key == k || key.rfind(k + ".", 0) == 0) return spec;
  }
  return "";
}

std::string YamlContext::where(const std::string& key, const YAML::Node& at) const {
  const std::string spec = override_for(key);
  if (!spec.empty()) return file_ + ": " + key + " (from --set " + spec + ")";
  if (at.IsDefined() && at.Mark().line >= 0) return file_ + ":" + std::to_string(at.Mark().line + 1) + ": " + key;
  return file_ + ": " + key;
}

void YamlContext::fail(const std::string& key, const YAML::Node& at, const std::string& what,
                       const std::string& hint) const {
  std::string msg = where(key, at) + ": " + what;
  if (!hint.empty()) msg += "\nHINT: " + hint;
  throw Error(msg);
}

// "did you mean `train.lr`?": the same key in another section, else the nearest key of this one.
std::string YamlContext::suggest(const std::string& section, const std::string& key,
                                 const std::vector<std::string>& known) const {
  for (const auto& [other, keys] : keys_) {
    if (other != section && contains(keys, key)) {
      return "did you mean `" + join_path(other, key) + "`? (it belongs in the `" +
             (other.empty() ? std::string("top") : other) + "` section)";
    }
  }
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& k : known) {
    const size_t d = edit_distance(key, k);
    if (d < best_d) best_d = d, best = k;
  }
  const std::string valid = "valid keys: " + join_list(known, ", ");
  if (!best.empty() && best_d <= std::max<size_t>(1, key.size() / 3)) {
    return "did you mean `" + join_path(section, best) + "`? (" + valid + ")";
  }
  return valid;
}

// ---------------------------------------------------------------------------------------------------------------
// YamlMap

YamlMap::YamlMap(const YamlContext& ctx, const YAML::Node& node, std::string path,
                 const std::vector<std::string>* known)
    : ctx_(ctx), path_(std::move(path)) {
  // A missing key arrives as an invalid ("zombie") node: reset() would throw InvalidNode; keep node_ empty.
  if (node.IsDefined()) node_.reset(node);
  if (node_.IsDefined() && !node_.IsNull() && !node_.IsMap()) {
    ctx_.fail(path_.empty() ? "<top level>" : path_, node_, "expected a mapping of keys, got " + describe_node(node_));
  }
  if (!node_.IsMap()) return;
  const std::vector<std::string>& keys = known ? *known : ctx_.keys_of(path_);
  for (const auto& kv : node_) {
    const std::string key = kv.first.Scalar();
    if (!contains(keys, key)) ctx_.fail(key_path(key), kv.first, "unknown key", ctx_.suggest(path_, key, keys));
  }
}

bool YamlMap::has(const std::string& key) const {
  return node_.IsMap() && node_[key].IsDefined();
}

YAML::Node YamlMap::get(const std::string& key) const {
  return has(key) ? node_[key] : YAML::Node();
}

std::string YamlMap::key_path(const std::string& key) const {
  return join_path(path_, key);
}

int YamlMap::line(const std::string& key) const {
  return has(key) ? get(key).Mark().line + 1 : 0;
}

std::string YamlMap::where(const std::string& key) const {
  return ctx_.where(key_path(key), has(key) ? get(key) : node_);
}

void YamlMap::fail(const std::string& key, const std::string& what, const std::string& hint) const {
  const YAML::Node n = get(key);
  // An empty value (`lr:`) has its mark on the following line: report the line of the key instead.
  if (has(key) && n.IsNull()) {
    for (const auto& kv : node_) {
      if (kv.first.IsScalar() && kv.first.Scalar() == key) ctx_.fail(key_path(key), kv.first, what, hint);
    }
  }
  ctx_.fail(key_path(key), has(key) ? n : node_, what, hint);
}

namespace {

// The reads of one present key, by type; every failure names the key.
class KeyReader {
 public:
  KeyReader(const YamlMap& map, const std::string& key) : m_(map), key_(key), n_(map.get(key)) {}

  YamlValue operator()(const BoolKey&) const {
    scalar("true or false");
    try {
      return n_.as<bool>();
    } catch (const YAML::Exception&) {
      m_.fail(key_, "expected true or false, got " + describe_node(n_));
    }
  }

  YamlValue operator()(const IntKey& t) const {
    scalar("an integer");
    int64_t v = 0;
    try {
      v = n_.as<int64_t>();
    } catch (const YAML::Exception&) {
      m_.fail(key_, "expected an integer, got " + describe_node(n_));
    }
    if (v < t.min) m_.fail(key_, "must be >= " + std::to_string(t.min) + " (got " + std::to_string(v) + ")");
    if (v > t.max) m_.fail(key_, "must be <= " + std::to_string(t.max) + " (got " + std::to_string(v) + ")");
    return v;
  }

  YamlValue operator()(const RealKey& t) const {
    scalar("a number");
    double v = 0;
    try {
      v = n_.as<double>();
    } catch (const YAML::Exception&) {
      m_.fail(key_, "expected a number, got " + describe_node(n_));
    }
    if (!std::isfinite(v)) m_.fail(key_, "must be a finite number (got " + n_.Scalar() + ")");
    if (t.min_open ? v <= t.min : v < t.min) {
      m_.fail(key_, std::string("must be ") + (t.min_open ? "> " : ">= ") + format_number(t.min) + " (got " +
                        format_number(v) + ")");
    }
    if (t.max_open ? v >= t.max : v > t.max) {
      m_.fail(key_, std::string("must be ") + (t.max_open ? "< " : "<= ") + format_number(t.max) + " (got " +
                        format_number(v) + ")");
    }
    return v;
  }

  YamlValue operator()(const TextKey& t) const { return text(t.allow_empty); }
  YamlValue operator()(const PathKey&) const { return text(/*allow_empty=*/false); }

  YamlValue operator()(const ChoiceKey& t) const {
    std::string v = text(/*allow_empty=*/false);
    if (auto it = t.aliases.find(v); it != t.aliases.end()) v = it->second;
    if (contains(t.options, v)) return v;
    m_.fail(key_, "unknown value `" + v + "`", "use one of: " + join_list(t.options, " | "));
  }

  YamlValue operator()(const ListKey& t) const {
    std::vector<std::string> out;
    if (n_.IsScalar()) {
      out.push_back(text(/*allow_empty=*/false));
    } else if (n_.IsSequence()) {
      for (size_t i = 0; i < n_.size(); ++i) {
        const YAML::Node item = n_[i];
        if (!item.IsScalar() || item.Scalar().empty()) {
          m_.ctx().fail(m_.key_path(key_) + "[" + std::to_string(i) + "]", item,
                        "expected a non-empty string, got " + describe_node(item));
        }
        out.push_back(item.Scalar());
      }
      if (out.empty()) m_.fail(key_, "must not be empty", t.empty_hint);
    } else {
      m_.fail(key_, "expected " + t.expected + ", got " + describe_node(n_));
    }
    return out;
  }

  YamlValue operator()(const MappingKey&) const { return n_; }

 private:
  void scalar(const std::string& expected) const {
    if (!n_.IsScalar()) m_.fail(key_, "expected " + expected + ", got " + describe_node(n_));
  }

  std::string text(bool allow_empty) const {
    scalar("a string");
    if (!allow_empty && n_.Scalar().empty()) m_.fail(key_, "must not be empty");
    return n_.Scalar();
  }

  const YamlMap& m_;
  const std::string& key_;
  YAML::Node n_;
};

}  // namespace

YamlValue YamlMap::read(const std::string& key, const KeyType& type) const {
  return std::visit(KeyReader(*this, key), type);
}

// ---------------------------------------------------------------------------------------------------------------
// Text helpers

std::string describe_node(const YAML::Node& n) {
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  if (n.IsNull()) return "nothing (null)";
  return "`" + n.Scalar() + "`";
}

std::string format_number(double v) {
  std::ostringstream ss;
  ss << v;
  return ss.str();
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

nlohmann::json yaml_to_json(const YAML::Node& n) {
  if (n.IsMap()) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& kv : n) j[kv.first.Scalar()] = yaml_to_json(kv.second);
    return j;
  }
  if (n.IsSequence()) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& item : n) j.push_back(yaml_to_json(item));
    return j;
  }
  if (n.IsScalar()) return n.Scalar();
  return nullptr;
}

namespace {

std::string describe_int_bound(int64_t v) {
  return v == std::numeric_limits<int64_t>::max() ? "inf" : std::to_string(v);
}

struct TypeDescriber {
  std::string operator()(const BoolKey&) const { return "true or false"; }
  std::string operator()(const IntKey& t) const {
    if (t.max == std::numeric_limits<int64_t>::max()) return "integer >= " + std::to_string(t.min);
    return "integer in [" + std::to_string(t.min) + ", " + describe_int_bound(t.max) + "]";
  }
  std::string operator()(const RealKey& t) const {
    return std::string("number in ") + (t.min_open ? "(" : "[") + format_number(t.min) + ", " + format_number(t.max) +
           (t.max_open ? ")" : "]");
  }
  std::string operator()(const TextKey&) const { return "string"; }
  std::string operator()(const PathKey&) const { return "path"; }
  std::string operator()(const ChoiceKey& t) const {
    std::string s = "`" + join_list(t.options, "`, `") + "`";
    std::vector<std::string> aliases;
    for (const auto& [alias, canonical] : t.aliases) aliases.push_back("`" + alias + "` = `" + canonical + "`");
    if (!aliases.empty()) s += " (also " + join_list(aliases, ", ") + ")";
    return s;
  }
  std::string operator()(const ListKey& t) const { return t.expected; }
  std::string operator()(const MappingKey& t) const { return t.expected; }
};

struct ValueDescriber {
  std::string operator()(bool v) const { return v ? "true" : "false"; }
  std::string operator()(int64_t v) const { return std::to_string(v); }
  std::string operator()(double v) const { return format_number(v); }
  std::string operator()(const std::string& v) const { return v.empty() ? "(none)" : v; }
  std::string operator()(const std::vector<std::string>& v) const {
    return v.empty() ? "(none)" : "[" + join_list(v, ", ") + "]";
  }
  std::string operator()(const YAML::Node&) const { return "(mapping)"; }
};

struct JsonMaker {
  nlohmann::json operator()(bool v) const { return v; }
  nlohmann::json operator()(int64_t v) const { return v; }
  nlohmann::json operator()(double v) const { return format_number(v); }
  nlohmann::json operator()(const std::string& v) const { return v; }
  nlohmann::json operator()(const std::vector<std::string>& v) const { return v; }
  nlohmann::json operator()(const YAML::Node& v) const { return yaml_to_json(v); }
};

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
  return parts;
}

}  // namespace

std::string describe_key_type(const KeyType& type) {
  return std::visit(TypeDescriber{}, type);
}

std::string describe_value(const YamlValue& v) {
  return std::visit(ValueDescriber{}, v);
}

void put_yaml_value(YAML::Node& out, const std::string& path, const YamlValue& v) {
  const std::vector<std::string> parts = split_path(path);
  if (out.IsNull()) out = YAML::Node(YAML::NodeType::Map);  // (a default node has no storage for cur to share)
  YAML::Node cur;
  cur.reset(out);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = cur[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[parts[i]]);
    }
    cur.reset(next);
  }
  std::visit([&](const auto& value) { cur[parts.back()] = value; }, v);
}

void put_json_value(nlohmann::json& out, const std::string& path, const YamlValue& v, bool append) {
  nlohmann::json* cur = &out;
  for (const auto& part : split_path(path)) cur = &(*cur)[part];
  nlohmann::json value = std::visit(JsonMaker{}, v);
  if (append) {
    cur->push_back(std::move(value));
  } else {
    *cur = std::move(value);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// schema_detail

namespace schema_detail {

Sections::Sections(const YamlContext& ctx, const YAML::Node& root, std::string root_path,
                   std::vector<std::string> shorthand_sections)
    : ctx_(ctx), root_(root), root_path_(std::move(root_path)), shorthand_sections_(std::move(shorthand_sections)) {}

const YamlMap& Sections::at(const std::string& path) {
  if (auto it = maps_.find(path); it != maps_.end()) return *it->second;
  std::unique_ptr<YamlMap> map;
  if (path == root_path_) {
    map = std::make_unique<YamlMap>(ctx_, root_, path);
  } else {
    const YamlMap& parent = at(parent_of(path));
    const std::string key = leaf_of(path);
    const YAML::Node node = parent.get(key);
    if (node.IsScalar() && contains(shorthand_sections_, path)) {
      scalar_.insert(path);
      map = std::make_unique<YamlMap>(ctx_, YAML::Node(), path);
    } else {
      map = std::make_unique<YamlMap>(ctx_, node, path);
    }
  }
  return *maps_.emplace(path, std::move(map)).first->second;
}

void fail_missing(const YamlContext& ctx, const YamlMap& section, const YAML::Node& root, const std::string& path,
                  const std::string& hint, bool is_section) {
  const std::string parent = parent_of(path);
  const YAML::Node& n = section.node();
  const YAML::Node& at = n.IsDefined() && !n.IsNull() && n.Mark().line >= 0 ? n : root;
  if (parent.empty()) {
    ctx.fail(path, at, is_section ? "missing the `" + path + "` section" : "missing `" + path + "`", hint);
  }
  ctx.fail(parent, at, "missing `" + path + "`", hint);
}

bool given(const YamlMap& m, const std::string& key) {
  return m.has(key) && !m.get(key).IsNull();
}

}  // namespace schema_detail

}  // namespace qlora
