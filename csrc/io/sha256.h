// SHA-256 digests (OpenSSL's libcrypto), as lowercase hex: the checksums of checkpoint manifests.
#pragma once

#include <string>
#include <string_view>

namespace moetrain::io {

std::string sha256_hex(std::string_view bytes);
// Digest of a whole file; throws naming the path when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace moetrain::io
