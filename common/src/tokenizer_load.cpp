// Loading tokenizers from disk: tokenizer.json (either kind), GPT-2's vocab.json + merges.txt,
// and building the BPE model they share, checked once here so that encoding never meets a
// merge whose parts are missing. Every error is an Error whose one-line message names the file
// and the offending value; nlohmann's exceptions are turned into such Errors at this boundary.
#include <algorithm>
#include <fstream>
#include <sstream>

#include "kvpr/common/error.h"
#include "kvpr/common/tokenizer.h"
#include "tokenizer_bpe.h"
#include "tokenizer_utf8.h"

namespace kvpr {
namespace tokenizer_detail {
namespace {

// Ids beyond this are a corrupt file, not a real vocabulary; refusing them bounds memory.
constexpr std::int32_t kMaxTokenId = 1 << 24;

}  // namespace

BpeModel::BpeModel(BpeSpec spec)
    : source_(std::move(spec.source)),
      added_(std::move(spec.added)),
      fuse_unk_(spec.fuse_unk),
      byte_fallback_(spec.byte_fallback),
      ignore_merges_(spec.ignore_merges) {
  std::int32_t max_id = -1;
  const auto check_id = [&](std::int32_t id, const std::string& token) {
    if (id < 0 || id >= kMaxTokenId) {
      fail(source_, ": id ", id, " of token ", quoted(token), " is out of range");
    }
    max_id = std::max(max_id, id);
  };
  for (const auto& [token, id] : spec.vocab) check_id(id, token);
  for (const AddedToken& added : added_) check_id(added.id, added.content);
  id_to_token_.resize(max_id < 0 ? 0 : static_cast<std::size_t>(max_id) + 1);
  has_token_.resize(id_to_token_.size(), false);
  for (auto& [token, id] : spec.vocab) {
    if (has_token_[id]) {
      fail(source_, ": id ", id, " is used by both ", quoted(id_to_token_[id]), " and ",
           quoted(token));
    }
    has_token_[id] = true;
    id_to_token_[id] = token;
    token_to_id_.emplace(std::move(token), id);
  }
  // An added token's content is what its id decodes to, as in HF's AddedVocabulary.
  for (const AddedToken& added : added_) {
    has_token_[added.id] = true;
    id_to_token_[added.id] = added.content;
    if (!added.content.empty())
      added_first_byte_[static_cast<unsigned char>(added.content[0])] = true;
  }
  if (spec.unk_token) {
    if (auto it = token_to_id_.find(*spec.unk_token); it != token_to_id_.end()) {
      unk_id_ = it->second;
    }
  }
  for (int b = 0; b < 256; ++b) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    const std::string piece = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    const auto it = token_to_id_.find(piece);
    byte_ids_[b] = it == token_to_id_.end() ? -1 : it->second;
  }
  merges_.reserve(spec.merges.size());
  for (std::size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const std::string& left = spec.merges[rank].first;
    const std::string& right = spec.merges[rank].second;
    const auto find = [&](const std::string& token) {
      const auto it = token_to_id_.find(token);
      if (it == token_to_id_.end()) {
        fail(source_, ": merge ", rank, " ", quoted(left), "+", quoted(right), " needs ",
             quoted(token), ", which is not in the vocab");
      }
      return it->second;
    };
    const std::int32_t a = find(left);
    const std::int32_t b = find(right);
    const std::int32_t merged = find(std::string(left).append(right));
    // Later duplicates win, as in both GPT-2's dict and HF's HashMap.
    merges_.insert_or_assign(pair_key(a, b), MergeTarget{static_cast<std::int32_t>(rank), merged});
  }
}

std::optional<std::int32_t> BpeModel::id_of(std::string_view token) const {
  for (const AddedToken& added : added_) {
    if (added.content == token) return added.id;
  }
  const auto it = token_to_id_.find(std::string(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

const std::string& BpeModel::token_of(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size() || !has_token_[id]) {
    fail(source_, ": token id ", id, " is not in the vocabulary of ", id_to_token_.size(), " ids");
  }
  return id_to_token_[id];
}

namespace {

using nlohmann::json;

std::string one_line(std::string text) {
  std::replace_if(
      text.begin(), text.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  if (text.size() > 300) text = text.substr(0, 300) + "...";
  return text;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open tokenizer file ", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

json parse_json(const std::filesystem::path& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail(path.string(), ": malformed JSON: ", one_line(e.what()));
  }
}

std::vector<std::pair<std::string, std::int32_t>> read_vocab(const json& vocab,
                                                             const std::string& source) {
  if (!vocab.is_object()) {
    fail(source, ": vocab is ", vocab.type_name(), ", not an object of token -> id");
  }
  std::vector<std::pair<std::string, std::int32_t>> entries;
  entries.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
        id.get<std::int64_t>() >= kMaxTokenId) {
      fail(source, ": vocab entry ", quoted(token), " has id ", one_line(id.dump()),
           ", not a token id");
    }
    entries.emplace_back(token, id.get<std::int32_t>());
  }
  return entries;
}

std::pair<std::string, std::string> split_merge(std::string_view line, std::size_t rank,
                                                const std::string& source) {
  const std::size_t space = line.find(' ');
  if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
      line.find(' ', space + 1) != std::string_view::npos) {
    fail(source, ": merge ", rank, " ", quoted(line), " is not two tokens separated by one space");
  }
  return {std::string(line.substr(0, space)), std::string(line.substr(space + 1))};
}

// Finds `type` in a pipeline step or inside a Sequence of steps, whatever the list is called.
bool has_step(const json& step, std::string_view type) {
  if (!step.is_object()) return false;
  if (step.value("type", "") == type) return true;
  for (const char* list : {"pretokenizers", "decoders", "normalizers", "processors"}) {
    if (const auto it = step.find(list); it != step.end() && it->is_array()) {
      if (std::any_of(it->begin(), it->end(), [&](const json& s) { return has_step(s, type); })) {
        return true;
      }
    }
  }
  return false;
}

// bos/eos from the post-processor: TemplateProcessing's single template "<bos> $A [<eos>]", or
// Roberta/Bert's cls and sep.
void read_post_processor(const json& post, const BpeModel& model, SpecialIds& ids) {
  if (!post.is_object()) return;
  const std::string type = post.value("type", "");
  if (type == "Sequence" && post.contains("processors")) {
    for (const json& step : post["processors"]) read_post_processor(step, model, ids);
  } else if (type == "TemplateProcessing" && post.value("single", json()).is_array()) {
    const json& single = post["single"];
    const json specials = post.value("special_tokens", json::object());
    const auto special_id = [&](const json& piece) -> std::optional<std::int32_t> {
      if (!piece.contains("SpecialToken")) return std::nullopt;
      const std::string name = piece["SpecialToken"].value("id", "");
      if (specials.contains(name) && !specials[name].value("ids", json::array()).empty()) {
        return specials[name]["ids"][0].get<std::int32_t>();
      }
      return model.id_of(name);
    };
    if (!single.empty() && !ids.bos) ids.bos = special_id(single.front());
    if (single.size() > 1 && !ids.eos) ids.eos = special_id(single.back());
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    if (!ids.bos) ids.bos = post.at("cls").at(1).get<std::int32_t>();
    if (!ids.eos) ids.eos = post.at("sep").at(1).get<std::int32_t>();
  }
}

// Without a post-processor that says, the first known name present wins. Byte-level models
// with </s> are fairseq-trained (OPT), which start sequences with </s>, not <s>.
SpecialIds find_special_ids(const json* root, const BpeModel& model, bool byte_level) {
  SpecialIds ids;
  if (root && root->contains("post_processor")) {
    read_post_processor((*root)["post_processor"], model, ids);
  }
  const auto first_of =
      [&](std::initializer_list<const char*> names) -> std::optional<std::int32_t> {
    for (const char* name : names) {
      if (const auto id = model.id_of(name)) return id;
    }
    return std::nullopt;
  };
  if (!ids.bos) {
    ids.bos = byte_level ? first_of({"<|endoftext|>", "</s>", "<s>"})
                         : first_of({"<s>", "<|begin_of_text|>"});
  }
  if (!ids.eos) ids.eos = first_of({"</s>", "<|endoftext|>", "<|end_of_text|>"});
  return ids;
}

BpeSpec read_bpe_spec(const json& root, const std::string& source) {
  const auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) fail(source, ": no \"model\" object");
  const json& model = *model_it;
  const json type = model.value("type", json(model.contains("merges") ? "BPE" : ""));
  if (type != "BPE") {
    raise(ErrorKind::unimplemented, source, ": model type ", one_line(type.dump()),
          " is not supported (only \"BPE\")");
  }
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(affix) && model[affix].is_string() &&
        !model[affix].get<std::string>().empty()) {
      raise(ErrorKind::unimplemented, source, ": BPE ", affix, " ", one_line(model[affix].dump()),
            " is not supported");
    }
  }
  BpeSpec spec;
  spec.source = source;
  spec.vocab = read_vocab(model.value("vocab", json()), source);
  const json merges = model.value("merges", json::array());
  if (!merges.is_array()) fail(source, ": merges is ", merges.type_name(), ", not an array");
  for (const json& merge : merges) {
    if (merge.is_string()) {
      spec.merges.push_back(split_merge(merge.get<std::string>(), spec.merges.size(), source));
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      spec.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      fail(source, ": merge ", spec.merges.size(), " is ", one_line(merge.dump()),
           ", not \"a b\" or [a, b]");
    }
  }
  if (model.value("unk_token", json()).is_string()) {
    spec.unk_token = model["unk_token"].get<std::string>();
  }
  spec.fuse_unk = model.value("fuse_unk", json(false)) == true;
  spec.byte_fallback = model.value("byte_fallback", json(false)) == true;
  spec.ignore_merges = model.value("ignore_merges", json(false)) == true;
  for (const json& added : root.value("added_tokens", json::array())) {
    spec.added.push_back({added.at("content").get<std::string>(),
                          added.at("id").get<std::int32_t>(), added.value("special", false),
                          added.value("single_word", false), added.value("lstrip", false),
                          added.value("rstrip", false)});
  }
  return spec;
}

}  // namespace
}  // namespace tokenizer_detail

using tokenizer_detail::BpeModel;

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json) {
  const std::string source = tokenizer_json.string();
  const nlohmann::json root = tokenizer_detail::parse_json(tokenizer_json);
  if (!root.is_object()) fail(source, ": top level is ", root.type_name(), ", not an object");
  try {
    BpeModel model(tokenizer_detail::read_bpe_spec(root, source));
    const bool byte_level =
        tokenizer_detail::has_step(root.value("pre_tokenizer", nlohmann::json()), "ByteLevel") ||
        tokenizer_detail::has_step(root.value("decoder", nlohmann::json()), "ByteLevel");
    const auto ids = tokenizer_detail::find_special_ids(&root, model, byte_level);
    if (byte_level) return tokenizer_detail::make_byte_bpe_tokenizer(std::move(model), ids, &root);
    return tokenizer_detail::make_sentencepiece_tokenizer(std::move(model), ids, root);
  } catch (const nlohmann::json::exception& e) {
    fail(source, ": unexpected structure: ", tokenizer_detail::one_line(e.what()));
  }
}

std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::filesystem::path& vocab_json,
                                               const std::filesystem::path& merges_txt) {
  tokenizer_detail::BpeSpec spec;
  spec.source = merges_txt.string();
  spec.vocab =
      tokenizer_detail::read_vocab(tokenizer_detail::parse_json(vocab_json), vocab_json.string());
  std::istringstream lines(tokenizer_detail::read_file(merges_txt));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.starts_with("#version")) continue;
    spec.merges.push_back(tokenizer_detail::split_merge(line, spec.merges.size(), spec.source));
  }
  BpeModel model(std::move(spec));
  const auto ids = tokenizer_detail::find_special_ids(nullptr, model, /*byte_level=*/true);
  return tokenizer_detail::make_byte_bpe_tokenizer(std::move(model), ids, nullptr);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(dir / "tokenizer.json", ec)) {
    return load_tokenizer_json(dir / "tokenizer.json");
  }
  if (std::filesystem::is_regular_file(dir / "vocab.json", ec) &&
      std::filesystem::is_regular_file(dir / "merges.txt", ec)) {
    return load_gpt2_tokenizer(dir / "vocab.json", dir / "merges.txt");
  }
  fail("no tokenizer in ", dir.string(), " (looked for tokenizer.json, vocab.json+merges.txt)");
}

}  // namespace kvpr
