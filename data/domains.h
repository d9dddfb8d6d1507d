// Domain sidecar PREFIX.domains: which data domain each document of a dataset comes from.
// Text format: first line "moetrain-domains 1", then one line per document holding its domain name
// (no spaces). Megatron's tools ignore it. Without a sidecar every document is domain "all".
#pragma once

#include <string>
#include <vector>

namespace moetrain::data {

class IndexedDataset;

void write_domains(const std::string& prefix, const std::vector<std::string>& domain_per_document);

// One name per document of `dataset`; throws if the sidecar's count differs from the dataset's.
std::vector<std::string> read_domains(const std::string& prefix, const IndexedDataset& dataset);

}  // namespace moetrain::data
