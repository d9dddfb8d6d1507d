// Reading and writing safetensors without holding whole files (csrc/io/safetensors.h): get_rows reads only
// the rows asked for (a rank's experts), the streamed writer writes the bytes encode_safetensors makes, and
// widens floating-point tensors as it goes (a bf16 base saved in fp32).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "csrc/io/safetensors.h"

using namespace moetrain;

namespace {

std::string scratch(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("moetrain_partial_read_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Bytes this process has read through read/pread so far (/proc/self/io rchar).
int64_t bytes_read() {
  std::ifstream io("/proc/self/io");
  std::string key;
  int64_t value = 0;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return -1;
}

}  // namespace

TEST(PartialRead, StreamedWriterWritesWhatEncodeMakes) {
  const io::NamedTensors tensors = {{"b", torch::arange(12, torch::kFloat32).reshape({3, 4})},
                                    {"a", torch::arange(5, torch::kInt64)},
                                    {"rng", torch::arange(7, torch::kUInt8)}};
  const std::string path = scratch("streamed.safetensors");
  const int64_t size = io::write_safetensors_synced(path, tensors, {{"format", "x"}});
  const std::string expected = io::encode_safetensors(tensors, {{"format", "x"}});
  EXPECT_EQ(size, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(file_bytes(path), expected);
}

TEST(PartialRead, StreamedWriterWidensFloatsOnly) {
  const auto w = torch::randn({4, 6}).to(torch::kBFloat16);
  const std::string path = scratch("widened.safetensors");
  io::write_safetensors_synced(path, {{"w", w}, {"steps", torch::arange(3, torch::kInt64)}}, {},
                               torch::kFloat32);
  EXPECT_EQ(file_bytes(path),
            io::encode_safetensors({{"w", w.to(torch::kFloat32)}, {"steps", torch::arange(3, torch::kInt64)}}));
  const io::SafetensorsFile f(path);
  EXPECT_TRUE(torch::equal(f.get("w").to(torch::kBFloat16), w));  // exact: bf16 → fp32 → bf16
}

TEST(PartialRead, GetRowsReadsOnlyTheRowsAskedFor) {
  const auto experts = torch::randn({16, 256, 256});  // 4 MiB: 16 "experts" of 256 KiB
  const std::string path = scratch("experts.safetensors");
  io::write_safetensors_synced(path, {{"w", experts}});
  const io::SafetensorsFile f(path);
  const int64_t before = bytes_read();
  const auto mine = f.get_rows("w", 8, 4);  // experts 8..11
  const int64_t read = bytes_read() - before;
  EXPECT_TRUE(torch::equal(mine, experts.narrow(0, 8, 4)));
  // 1 MiB of rows, plus the few bytes of reading /proc/self/io itself; the whole tensor would be 4 MiB.
  EXPECT_GE(read, 4 * 256 * 256 * 4);
  EXPECT_LT(read, 4 * 256 * 256 * 4 + 4096) << "get_rows read " << read << " bytes for 1 MiB of rows";
  EXPECT_TRUE(torch::equal(f.get_rows("w", 0, 0), experts.narrow(0, 0, 0)));
  EXPECT_THROW(f.get_rows("w", 14, 4), std::out_of_range);
  try {
    f.get_rows("w", 14, 4);
  } catch (const std::out_of_range& e) {
    EXPECT_EQ(std::string(e.what()), path + ": rows [14, 18) of w are outside its 16 rows");
  }
}

TEST(PartialRead, RejectsATruncatedFileNamingIt) {
  const std::string path = scratch("truncated.safetensors");
  const std::string whole = io::encode_safetensors({{"w", torch::ones({64})}});
  io::write_file_synced(path, whole.substr(0, whole.size() - 8));
  try {
    io::SafetensorsFile f(path);
    FAIL() << "a truncated file was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  path + ": not a valid safetensors file: tensor w has data_offsets outside the file"),
              std::string::npos)
        << e.what();
  }
}
