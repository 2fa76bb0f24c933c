#include "server/checkpoint/source_checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace nvfp4::checkpoint {
namespace {

namespace fs = std::filesystem;

constexpr char kIndexName[] = "model.safetensors.index.json";

absl::StatusOr<nlohmann::ordered_json> ReadJson(const fs::path& path) {
  ASSIGN_OR_RETURN(const std::string text, io::internal::ReadFileToString(path.string()));
  nlohmann::ordered_json json = nlohmann::ordered_json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a JSON object"));
  }
  return json;
}

}  // namespace

bool IsWeightFileName(std::string_view file_name) {
  const absl::string_view name(file_name.data(), file_name.size());
  if (name == kIndexName || absl::EndsWith(name, ".index.json")) return true;
  for (absl::string_view ext : {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack",
                                ".onnx", ".gguf", ".ot", ".tflite"}) {
    if (absl::EndsWith(name, ext)) return true;
  }
  return false;
}

const SourceTensor* SourceCheckpoint::Find(std::string_view name) const {
  const auto it = index_.find(absl::string_view(name.data(), name.size()));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::unique_ptr<SourceCheckpoint>> SourceCheckpoint::Open(const std::string& dir,
                                                                         const PathPolicy& paths) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat(dir, fs::exists(dir, ec) ? ": not a directory (a checkpoint is a directory)"
                                              : ": no such directory"));
  }
  std::unique_ptr<SourceCheckpoint> source(new SourceCheckpoint());
  source->dir_ = dir;
  const fs::path root(dir);

  // Which shard files, and (with an index) which tensor lives where.
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> index_map;  // tensor -> shard file
  const bool has_index = fs::exists(root / kIndexName, ec);
  if (has_index) {
    RETURN_IF_ERROR(paths.CheckExisting((root / kIndexName).string()).status());
    ASSIGN_OR_RETURN(nlohmann::ordered_json index, ReadJson(root / kIndexName));
    const auto map = index.find("weight_map");
    if (map == index.end() || !map->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat((root / kIndexName).string(), ": no 'weight_map' object"));
    }
    std::set<std::string> unique;
    for (const auto& item : map->items()) {
      if (!item.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat((root / kIndexName).string(),
                                                       ": weight_map entry '", item.key(),
                                                       "' is not a file name"));
      }
      const std::string& file = item.value().get_ref<const std::string&>();
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat((root / kIndexName).string(), ": weight_map entry '", item.key(),
                         "' names '", file, "', not a file in the directory"));
      }
      index_map[item.key()] = file;
      unique.insert(file);
    }
    shard_names.assign(unique.begin(), unique.end());
  } else {
    for (const fs::directory_entry& entry : fs::directory_iterator(root, ec)) {
      const std::string name = entry.path().filename().string();
      if (absl::EndsWith(name, ".safetensors") && entry.is_regular_file(ec)) {
        shard_names.push_back(name);
      }
    }
    if (ec) return io::FileErrorCodeStatus(ec, dir, "cannot list");
    std::sort(shard_names.begin(), shard_names.end());
  }
  if (shard_names.empty()) {
    return absl::NotFoundError(absl::StrCat(dir, ": no safetensors weights (*.safetensors)"));
  }

  std::ostringstream fingerprint;
  std::map<std::string, std::string> owner;  // tensor -> shard
  for (const std::string& shard : shard_names) {
    const fs::path path = root / shard;
    RETURN_IF_ERROR(paths.CheckExisting(path.string()).status());
    ASSIGN_OR_RETURN(MappedSafetensors mapped, MappedSafetensors::Open(path.string()));
    auto file = std::make_unique<MappedSafetensors>(std::move(mapped));
    struct stat st {};
    ::stat(path.c_str(), &st);
    fingerprint << shard << ' ' << file->file_size() << ' ' << st.st_mtim.tv_sec << '.'
                << st.st_mtim.tv_nsec << '\n';
    for (const SafetensorsTensorInfo& info : file->header().tensors) {
      fingerprint << ' ' << info.name << ' ' << info.dtype << ' ' << info.begin << '\n';
      const auto [it, inserted] = owner.emplace(info.name, shard);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            dir, ": tensor '", info.name, "' appears in both ", it->second, " and ", shard));
      }
      if (has_index) {
        const auto listed = index_map.find(info.name);
        if (listed == index_map.end() || listed->second != shard) {
          return absl::InvalidArgumentError(absl::StrCat(path.string(), ": tensor '", info.name,
                                                         "' is not listed for this file in ",
                                                         kIndexName));
        }
      }
      source->tensors_.push_back({info.name, file.get(), &info});
    }
    source->weight_bytes_ += file->file_size();
    source->files_.push_back(std::move(file));
  }
  for (const auto& [tensor, file] : index_map) {
    if (!owner.contains(tensor)) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": ", kIndexName, " lists tensor '",
                                                     tensor, "' in ", file,
                                                     ", which does not contain it"));
    }
  }
  std::sort(source->tensors_.begin(), source->tensors_.end(),
            [](const SourceTensor& a, const SourceTensor& b) { return a.name < b.name; });
  for (size_t i = 0; i < source->tensors_.size(); ++i) {
    source->index_.emplace(source->tensors_[i].name, i);
  }
  source->fingerprint_ = fingerprint.str();

  // Everything else is copied: config, tokenizer, generation config, sub-module configs, ...
  for (auto it = fs::recursive_directory_iterator(
           root, fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {  // .git, .cache, .gitattributes, ...
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file(ec)) continue;
    if (IsWeightFileName(name)) {
      if (it.depth() > 0) {
        source->skipped_subdirectory_weights_.push_back(
            it->path().lexically_relative(root).string());
      }
      continue;
    }
    RETURN_IF_ERROR(paths.CheckExisting(it->path().string()).status());
    // lexically: fs::relative would resolve a symlink (an HF cache snapshot's ../../blobs/...)
    // and the copy would land outside the output.
    source->other_files_.push_back(it->path().lexically_relative(root).string());
  }
  if (ec) return io::FileErrorCodeStatus(ec, dir, "cannot list");
  std::sort(source->other_files_.begin(), source->other_files_.end());
  std::sort(source->skipped_subdirectory_weights_.begin(),
            source->skipped_subdirectory_weights_.end());

  if (fs::exists(root / "config.json", ec)) {
    RETURN_IF_ERROR(paths.CheckExisting((root / "config.json").string()).status());
    ASSIGN_OR_RETURN(source->config_, ReadJson(root / "config.json"));
  }
  return source;
}

}  // namespace nvfp4::checkpoint
