// The manifest of a committed checkpoint (RUN_DIR/checkpoints/step_N/manifest.json, format version 1;
// layout in docs/checkpoints.md), read and checked before anything trusts it.
//
// Contract: parse_manifest returns the manifest only when every field the readers use (the trainer's
// load, moe-ckpt, moe-export) has its type and range: the header (format, version), the train state
// (step, samples_consumed, tokens, optimizer_step: integers >= 0), the layout (world, tp, ep: integers
// >= 1), the digests and texts (strings), every file (bytes: integer >= 0, sha256: 64 hex digits) and
// every tensor (shape: integers >= 0 with at most 2^62 elements; shards: a file the manifest lists,
// offsets and shape of the tensor's rank with offset + shape inside the tensor). Anything else throws
// std::runtime_error naming the path, the field, the value found and the fix (no other exception type
// escapes). Coverage (shards that tile the tensor exactly) is checked where a rank assembles its part.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace moetrain::trainer {

inline constexpr int kCheckpointFormatVersion = 1;

// Checks manifest text; `path` names it in errors.
nlohmann::json parse_manifest(const std::string& text, const std::string& path);

// Reads `manifest.json` of a committed checkpoint directory and checks it with parse_manifest (throws
// naming the path when it is missing, unreadable, of an unknown format version or malformed). Returned
// as JSON text.
std::string read_manifest(const std::string& dir);

}  // namespace moetrain::trainer
