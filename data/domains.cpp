#include "data/domains.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "data/indexed_dataset.h"

namespace moetrain::data {

constexpr const char* kHeader = "moetrain-domains 1";

void write_domains(const std::string& prefix, const std::vector<std::string>& domains) {
  const std::string path = prefix + ".domains";
  {
    std::ofstream out(path + ".tmp", std::ios::trunc);
    if (!out) throw std::runtime_error(path + ": cannot create; check the output directory is writable");
    out << kHeader << "\n";
    for (const auto& d : domains) {
      if (d.empty() || d.find_first_of(" \t\n") != std::string::npos) {
        throw std::runtime_error(path + ": domain name \"" + d + "\" must be non-empty without spaces");
      }
      out << d << "\n";
    }
  }
  std::filesystem::rename(path + ".tmp", path);
}

std::vector<std::string> read_domains(const std::string& prefix, const IndexedDataset& dataset) {
  const std::string path = prefix + ".domains";
  std::ifstream in(path);
  if (!in) return std::vector<std::string>(static_cast<size_t>(dataset.num_documents()), "all");
  std::string line;
  std::getline(in, line);
  if (line != kHeader) {
    throw std::runtime_error(path + ": first line is \"" + line + "\", expected \"" + kHeader +
                             "\"; re-create it with moe-data encode or delete it");
  }
  std::vector<std::string> domains;
  while (std::getline(in, line)) domains.push_back(line);
  if (static_cast<int64_t>(domains.size()) != dataset.num_documents()) {
    throw std::runtime_error(path + ": names " + std::to_string(domains.size()) +
                             " documents but the dataset has " + std::to_string(dataset.num_documents()) +
                             "; it belongs to another dataset: re-create it with moe-data encode");
  }
  return domains;
}

}  // namespace moetrain::data
