// Checkpoint manifests: the size and CRC32C of every file of a checkpoint folder, in manifest.json (written last,
// before the folder is renamed into place), checked before a run resumes from it. A flipped byte anywhere in a
// checkpoint is then a warning and a fallback to an older checkpoint, never a silently different run.
//
// CRC32C (Castagnoli; as iSCSI, ext4 and RocksDB use it): SSE4.2's crc32 instruction where the CPU has it (several
// GB/s), a table otherwise. It detects every 1-, 2- and 3-bit error and every burst up to 32 bits; it is a check
// against corruption, not against an adversary who can also rewrite the manifest.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace qlora::trainer {

namespace fs = std::filesystem;

inline constexpr const char* kManifestFile = "manifest.json";

// CRC32C of `n` bytes, continuing from `crc` (0 to start; chain calls over the parts of a file).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

namespace detail {
// The bytewise table version: the specification the fast path is tested against.
uint32_t crc32c_ref(const void* data, size_t n, uint32_t crc = 0);
}  // namespace detail

struct FileDigest {
  uint64_t size = 0;
  uint32_t crc32c = 0;
};

// Size and CRC32C of a file, read in chunks (never whole).
FileDigest digest_file(const fs::path& file);

// Writes `dir`/manifest.json listing every regular file of `dir` (but itself) with its size and CRC32C.
void write_manifest(const fs::path& dir);

enum class ManifestCheck { kVerified, kNoManifest, kCorrupt };

// Checks `dir` against its manifest: every listed file present with its size and checksum, and trainer_state.json
// among them. kCorrupt sets *why (naming the file and what differs).
ManifestCheck verify_manifest(const fs::path& dir, std::string* why);

}  // namespace qlora::trainer
