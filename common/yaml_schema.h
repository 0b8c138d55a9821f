// One definition per config key: a YAML config section is a table of ConfigKey rows (key path, type with its
// allowed values, help, whether it enters the run hash, and the struct field it fills). Parsing with unknown-key
// detection and "did you mean", the effective-config output, the run hash and the Markdown key reference are all
// derived from that table (the idea of llama.cpp's common/arg.cpp: one row per option, declared once).
//
//   std::vector<ConfigKey<Cfg>> keys;
//   const auto add = [&keys](ConfigKey<Cfg> key) { keys.push_back(std::move(key)); };
//   add({.path = "train.lr", .type = RealKey{.min = 0.0, .max = 10.0, .min_open = true}, .help = "peak learning rate",
//        .hash = "train.lr", .field = member(&Cfg::train, &TrainSection::lr)});
//   YamlContext ctx("cfg.yaml", overrides);
//   register_keys(ctx, keys);
//   parse_keys(ctx, root, /*root_path=*/"", keys, cfg);
//
// Defaults live in the struct's member initializers (a default-constructed struct is the table's defaults);
// a row only adds `default_from` when the default is computed from other keys.
//
// Rows are added one by one (not as one braced list): GCC 12 crashes (internal compiler error in nothrow_spec_p) on
// a std::initializer_list of this template's rows.
//
// Every problem is a qlora::Error "<file>:<line>: <key.path>: <what>\nHINT: <how to fix>", or
// "<file>: <key.path> (from --set k=v): <what>" when an override set the key.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace qlora {

// ---------------------------------------------------------------------------------------------------------------
// Key types: what a row accepts.

struct BoolKey {};
struct IntKey {
  int64_t min = 0;
  int64_t max = std::numeric_limits<int64_t>::max();
};
struct RealKey {  // [min, max]; min_open / max_open make that end exclusive
  double min = 0.0;
  double max = 0.0;
  bool min_open = false;
  bool max_open = false;
};
struct TextKey {
  bool allow_empty = false;
};
struct PathKey {};  // a non-empty string naming a file or folder
struct ChoiceKey {  // one of `options`; aliases map other spellings onto them
  std::vector<std::string> options = {};
  std::map<std::string, std::string> aliases = {};
};
struct ListKey {                // one non-empty string or a non-empty list of them
  std::string expected = {};    // "`all-linear` or a list of module names"
  std::string empty_hint = {};  // for an empty list
};
struct MappingKey {  // anything else: the row's own `parse` hook reads the node
  std::string expected = {};
};
using KeyType = std::variant<BoolKey, IntKey, RealKey, TextKey, PathKey, ChoiceKey, ListKey, MappingKey>;

// A value read from YAML (or from a struct field, for output and hashing). YAML::Node: a MappingKey's node.
using YamlValue = std::variant<bool, int64_t, double, std::string, std::vector<std::string>, YAML::Node>;

struct KeyProblem {
  std::string what;
  std::string hint;
};

// ---------------------------------------------------------------------------------------------------------------
// Where values come from (file, line, --set) and which keys exist (for unknown keys and "did you mean").

class YamlContext {
 public:
  explicit YamlContext(std::string file, const std::vector<std::string>& overrides = {});

  const std::string& file() const { return file_; }
  // Registers "a.b.c": section "a.b" knows key "c", "a" knows "b", "" knows "a" (each once, in order).
  void add_key(const std::string& path);
  // The keys of a section ("" = top level); empty if unknown.
  const std::vector<std::string>& keys_of(const std::string& section) const;
  // The "k=v" override that set `key` (or a mapping above it); "" if none.
  std::string override_for(const std::string& key) const;
  // "did you mean ...?" for an unknown `key` in `section` whose valid keys are `known`.
  std::string suggest(const std::string& section, const std::string& key, const std::vector<std::string>& known) const;

  // Where `key` (at node `at`) comes from, as errors and warnings name it: "file: key (from --set k=v)",
  // "file:line: key" or "file: key".
  std::string where(const std::string& key, const YAML::Node& at) const;
  [[noreturn]] void fail(const std::string& key, const YAML::Node& at, const std::string& what,
                         const std::string& hint = "") const;

 private:
  std::string file_;
  std::map<std::string, std::string> overrides_;  // key path -> "k=v"
  std::map<std::string, std::vector<std::string>> keys_;
};

// One mapping of the document with typed, range-checked reads. Unknown keys fail at construction.
class YamlMap {
 public:
  // `known`: the valid keys; nullptr takes them from ctx.keys_of(path).
  YamlMap(const YamlContext& ctx, const YAML::Node& node, std::string path,
          const std::vector<std::string>* known = nullptr);

  // A key written with no value (`lr:`) counts as present, so it is reported instead of silently defaulted.
  bool has(const std::string& key) const;
  YAML::Node get(const std::string& key) const;
  std::string key_path(const std::string& key) const;
  const std::string& path() const { return path_; }
  const YAML::Node& node() const { return node_; }
  const YamlContext& ctx() const { return ctx_; }
  int line(const std::string& key) const;  // 1-based; 0 when absent

  [[noreturn]] void fail(const std::string& key, const std::string& what, const std::string& hint = "") const;
  // YamlContext::where for `key` of this mapping (the mapping itself when the key is absent).
  std::string where(const std::string& key) const;

  // Reads `key` (present) as `type`; MappingKey returns the node itself.
  YamlValue read(const std::string& key, const KeyType& type) const;

 private:
  const YamlContext& ctx_;
  YAML::Node node_;
  std::string path_;
};

// "a list", "a mapping", "nothing (null)" or "`text`".
std::string describe_node(const YAML::Node& n);
// Shortest round-trip-stable text of a number as the config hash has always written it (`ostream << double`).
std::string format_number(double v);
// Levenshtein distance (for did-you-mean hints).
size_t edit_distance(const std::string& a, const std::string& b);
// A YAML tree as JSON with every scalar as a string.
nlohmann::json yaml_to_json(const YAML::Node& n);
// Docs text of a key's type and allowed values, e.g. "number in (0, 10]".
std::string describe_key_type(const KeyType& type);
// Docs text of a value, e.g. "0.0002", "[all-linear]".
std::string describe_value(const YamlValue& v);

// ---------------------------------------------------------------------------------------------------------------
// Field bindings: how a row reads and writes its struct member.

template <class C>
struct Field {
  std::function<YamlValue(const C&)> get = {};
  std::function<void(C&, const YamlValue&)> set = {};
};

template <class T>
YamlValue to_yaml_value(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v;
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<int64_t>(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    return static_cast<double>(v);
  } else if constexpr (std::is_same_v<T, std::filesystem::path>) {
    return v.string();
  } else {
    return YamlValue(std::in_place_type<T>, v);  // std::string, std::vector<std::string>, YAML::Node
  }
}

template <class T>
void from_yaml_value(const YamlValue& v, T& out) {
  if constexpr (std::is_same_v<T, bool>) {
    out = std::get<bool>(v);
  } else if constexpr (std::is_integral_v<T>) {
    out = static_cast<T>(std::get<int64_t>(v));
  } else if constexpr (std::is_floating_point_v<T>) {
    out = static_cast<T>(std::get<double>(v));
  } else if constexpr (std::is_same_v<T, std::filesystem::path>) {
    out = std::get<std::string>(v);
  } else if constexpr (std::is_same_v<T, YAML::Node>) {
    out.reset(std::get<YAML::Node>(v));  // never Node::operator= (it assigns through an alias)
  } else {
    out = std::get<T>(v);
  }
}

// A member of the config struct itself.
template <class C, class T>
Field<C> member(T C::*m) {
  return {[m](const C& c) { return to_yaml_value(c.*m); }, [m](C& c, const YamlValue& v) { from_yaml_value(v, c.*m); }};
}

// A member of a section struct inside the config.
template <class C, class S, class T>
Field<C> member(S C::*s, T S::*m) {
  return {[s, m](const C& c) { return to_yaml_value(c.*s.*m); },
          [s, m](C& c, const YamlValue& v) { from_yaml_value(v, c.*s.*m); }};
}

// An enum member written as one of a fixed set of names (the same table gives ChoiceKey its options).
template <class E>
using EnumNames = std::vector<std::pair<const char*, E>>;

template <class E>
std::vector<std::string> enum_options(const EnumNames<E>& names) {
  std::vector<std::string> out;
  for (const auto& [name, value] : names) out.emplace_back(name);
  return out;
}

template <class E>
const char* enum_name(const EnumNames<E>& names, E value) {
  for (const auto& [name, v] : names) {
    if (v == value) return name;
  }
  return "?";
}

template <class C, class E>
Field<C> enum_member(E C::*m, EnumNames<E> names) {
  return {[m, names](const C& c) { return YamlValue(std::string(enum_name(names, c.*m))); },
          [m, names](C& c, const YamlValue& v) {
            for (const auto& [name, value] : names) {
              if (std::get<std::string>(v) == name) c.*m = value;
            }
          }};
}

// ---------------------------------------------------------------------------------------------------------------
// A row of a schema table.

template <class C>
struct ConfigKey {
  std::string path = {};  // full key path, e.g. "model.quant.type"
  KeyType type;           // every row names it (and GCC 12 crashes on a variant member initializer in a template)
  std::string help = {};
  // Where the key enters the run hash (a path in trajectory_fields); "" = not hashed. Rows sharing a path form a
  // list in row order (train.betas).
  std::string hash = {};
  Field<C> field = {};

  // Optional parts (every member has an initializer, so rows name only what they use).
  std::string default_doc = {};                                           // docs text of a computed default
  std::function<void(C&)> default_from = {};                              // the default when the key is absent
  std::function<std::optional<KeyProblem>(const YamlValue&)> check = {};  // validation beyond the type's range
  // Reads the key itself (MappingKey rows): gets the section holding the key, and the key.
  std::function<void(const YamlMap&, const std::string&, C&)> parse = {};
  std::function<bool(const C&)> emit_if = {};  // when the effective config shows the key (unset: always)
  std::string exclusive_with = {};             // a sibling key that may not be given too
  std::string exclusive_hint = {};
  std::string required_hint = {};    // non-empty: the key must be given; says what to write
  bool nullable = false;             // `key:` with no value counts as absent
  bool shorthand = false;            // the parent mapping may be written as a scalar meaning this key
  bool hash_unless_default = false;  // hashed only when not the default (keys added after runs existed)
};

template <class C>
void register_keys(YamlContext& ctx, const std::vector<ConfigKey<C>>& keys) {
  for (const auto& k : keys) ctx.add_key(k.path);
}

namespace schema_detail {

inline std::string parent_of(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? std::string() : path.substr(0, dot);
}

inline std::string leaf_of(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

// The mappings of one document, opened (and checked for unknown keys) when a row first needs them.
class Sections {
 public:
  Sections(const YamlContext& ctx, const YAML::Node& root, std::string root_path,
           std::vector<std::string> shorthand_sections);
  const YamlMap& at(const std::string& path);
  // Whether `path` was written as a scalar (the shorthand of one of its keys).
  bool is_scalar(const std::string& path) const { return scalar_.count(path) > 0; }

 private:
  const YamlContext& ctx_;
  YAML::Node root_;
  std::string root_path_;
  std::vector<std::string> shorthand_sections_;
  std::map<std::string, std::unique_ptr<YamlMap>> maps_;
  std::set<std::string> scalar_;
};

// The error for a required key that is absent: "<section>: missing `<path>`" at the section's line.
[[noreturn]] void fail_missing(const YamlContext& ctx, const YamlMap& section, const YAML::Node& root,
                               const std::string& path, const std::string& hint, bool is_section);

bool given(const YamlMap& m, const std::string& key);  // present and not null

}  // namespace schema_detail

// Parses the keys under `root_path` (root is that node; "" = the document) into `out`, in row order.
template <class C>
void parse_keys(const YamlContext& ctx, const YAML::Node& root, const std::string& root_path,
                const std::vector<ConfigKey<C>>& keys, C& out) {
  using namespace schema_detail;
  std::vector<std::string> shorthand_sections;
  for (const auto& k : keys) {
    if (k.shorthand) shorthand_sections.push_back(parent_of(k.path));
  }
  Sections sections(ctx, root, root_path, shorthand_sections);
  for (const auto& k : keys) {
    const std::string parent = parent_of(k.path), key = leaf_of(k.path);
    const YamlMap& m = sections.at(parent);
    if (k.shorthand && sections.is_scalar(parent)) {  // `quant: nf4` for `quant: {type: nf4}`
      const YamlMap& grand = sections.at(parent_of(parent));
      k.field.set(out, grand.read(leaf_of(parent), k.type));
      continue;
    }
    if (!m.has(key) || (k.nullable && m.get(key).IsNull())) {
      if (!k.required_hint.empty()) {
        fail_missing(ctx, m, root, k.path, k.required_hint, std::holds_alternative<MappingKey>(k.type));
      }
      if (k.default_from) k.default_from(out);
      continue;
    }
    if (!k.exclusive_with.empty() && given(m, k.exclusive_with)) {
      m.fail(key, "give either " + m.key_path(k.exclusive_with) + " or " + k.path + ", not both", k.exclusive_hint);
    }
    if (k.parse) {
      k.parse(m, key, out);
      continue;
    }
    const YamlValue v = m.read(key, k.type);
    if (k.check) {
      if (auto problem = k.check(v)) m.fail(key, problem->what, problem->hint);
    }
    k.field.set(out, v);
  }
}

// Writes every key (that its emit_if allows) of `c` into `out` at its path.
void put_yaml_value(YAML::Node& out, const std::string& path, const YamlValue& v);
template <class C>
void emit_keys(const std::vector<ConfigKey<C>>& keys, const C& c, YAML::Node& out) {
  for (const auto& k : keys) {
    if (!k.emit_if || k.emit_if(c)) put_yaml_value(out, k.path, k.field.get(c));
  }
}

// The hashed keys of `c` as JSON: numbers with format_number (so 2e-4 and 2.0e-4 hash the same), YAML nodes with
// yaml_to_json; rows sharing a hash path become a list.
void put_json_value(nlohmann::json& out, const std::string& path, const YamlValue& v, bool append);
template <class C>
void hash_keys(const std::vector<ConfigKey<C>>& keys, const C& c, nlohmann::json& out) {
  const C defaults{};
  std::map<std::string, int> uses;
  for (const auto& k : keys) ++uses[k.hash];
  for (const auto& k : keys) {
    if (k.hash.empty()) continue;
    const YamlValue v = k.field.get(c);
    if (k.hash_unless_default && describe_value(v) == describe_value(k.field.get(defaults))) continue;
    put_json_value(out, k.hash, v, uses[k.hash] > 1);
  }
}

// A Markdown table of the keys: key, type and allowed values, default, run hash, help.
template <class C>
std::string keys_markdown(const std::vector<ConfigKey<C>>& keys) {
  const C defaults{};
  std::string md = "| key | type | default | hash | meaning |\n|---|---|---|---|---|\n";
  for (const auto& k : keys) {
    const std::string def = !k.required_hint.empty() ? "required"
                            : !k.default_doc.empty() ? "`" + k.default_doc + "`"
                                                     : "`" + describe_value(k.field.get(defaults)) + "`";
    std::string hash = k.hash.empty() ? "no" : k.hash_unless_default ? "unless default" : "yes";
    md += "| `" + k.path + "` | " + describe_key_type(k.type) + " | " + def + " | " + hash + " | " + k.help + " |\n";
  }
  return md;
}

}  // namespace qlora
